"""Graph rewrites, one per file. Importing this package registers them all."""

from tensorfold.passes import auto, cp, svd, tt, tucker  # noqa: F401 - registration side effects
from tensorfold.passes.base import PASSES, Pass, PassContext, PassManager, PassResult, RankSpec, get_pass

__all__ = ["PASSES", "Pass", "PassContext", "PassManager", "PassResult", "RankSpec", "get_pass"]
