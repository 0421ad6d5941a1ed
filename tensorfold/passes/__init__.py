"""Graph rewrites, one per file. Importing this package registers them all (`register_pass`);
the method names every command offers derive from that registry."""

from tensorfold.passes import auto, cp, svd, tt, tucker  # noqa: F401 - registration side effects
from tensorfold.passes.base import PASSES, Pass, PassContext, PassResult, RankSpec, get_pass
from tensorfold.passes.factorize import method_classes

_methods = method_classes()
# the methods, in the order they are listed (--method, `inspect`, configs)
METHODS: tuple[str, ...] = tuple(sorted(_methods, key=lambda name: _methods[name].order))
# the methods a per-layer plan may name (rank search, configs); auto picks per layer itself
PLANNABLE: tuple[str, ...] = tuple(name for name in METHODS if _methods[name].plannable)

__all__ = ["METHODS", "PASSES", "PLANNABLE", "Pass", "PassContext", "PassResult", "RankSpec", "get_pass"]
