"""Which weights a recovery run trains: the factor chains tensorfold wrote, or every weight.

Why the chains by default: the layers a factorization left whole are the pretrained model's own
and already agree with the teacher; what is off is the chains that replaced the others. Training
only those, measured per model on the same candidate, same data and same rate search
(docs/results/recovery-trained-weights.md): the held-out error ends lower or the same, the run is
faster (no gradients or optimizer state for the untouched weights, no weight gradients through
them) and holds less memory. On a pretrained model near its teacher, every weight free also makes
the rate search settle on rates too small to move anything: Adam's first steps move each element
by about the rate, and the untouched weights cannot take such a step (a ViT-S chose 3.2e-08 with
every weight free, 3.2e-05 with the chains alone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tensorfold.recovery.onnx_torch import OnnxModule

TRAIN_CHOICES = ("chains", "all")


def check_train(which: str) -> None:
    """One `error:` line for a choice that is not one (optimize's options and RecoverConfig)."""
    if which not in TRAIN_CHOICES:
        from tensorfold.errors import TensorfoldError

        raise TensorfoldError(f"--train {which}: choose from {', '.join(TRAIN_CHOICES)}")


@dataclass(frozen=True)
class TrainedWeights:
    """What a run trains, in weight elements."""

    trained: int
    total: int
    which: str  # "chains" | "all"
    chains_found: bool = True  # False: "chains" was asked, the model holds none, every weight trains

    def describe(self) -> str:
        if self.which == "all":
            return f"every weight trained ({self.trained:,})"
        if not self.chains_found:
            return f"every weight trained ({self.trained:,}): the model holds no factor chains tensorfold wrote"
        return f"the factor chains' {self.trained:,} of {self.total:,} weights trained (--train all: every weight)"


def describe_runs(runs: list[TrainedWeights]) -> str:
    """What several runs (a search's candidates) trained: one run's phrase where they agree, else
    each candidate's count from the fewest to the most (ranks differ, so the chains' weights do)."""
    distinct = list(dict.fromkeys(runs))
    if len(distinct) == 1:
        return distinct[0].describe()
    if all(r.which == "chains" and r.chains_found for r in distinct):
        low, high = min(distinct, key=lambda r: r.trained), max(distinct, key=lambda r: r.trained)
        return (
            f"the factor chains' weights trained, {low.trained:,} of {low.total:,} to {high.trained:,} of "
            f"{high.total:,} by candidate (--train all: every weight)"
        )
    return "; ".join(r.describe() for r in distinct)


def train_only(module: OnnxModule, which: str) -> TrainedWeights:
    """Leave trainable only the weights `which` names ("chains": those a factor chain's nodes read,
    by the provenance factorize writes on them; "all": every learnable weight). A model with no
    chains trains every weight. The others stay in the module, fixed."""
    if which not in TRAIN_CHOICES:  # callers check the user's choice first (check_train): a bug here
        raise ValueError(f"train: choose from {', '.join(TRAIN_CHOICES)} (got {which!r})")
    learnable = {name: module.params[key] for name, key in module.param_of.items() if module.params[key].requires_grad}
    total = sum(p.numel() for p in learnable.values())
    if which == "all":
        return TrainedWeights(total, total, which)
    read = {i for node in module.proto.graph.node if node.name in module.chain_of for i in node.input}
    if not read & learnable.keys():
        return TrainedWeights(total, total, which, chains_found=False)
    for name, param in learnable.items():
        if name not in read:
            param.requires_grad_(False)
    return TrainedWeights(sum(p.numel() for n, p in learnable.items() if n in read), total, which)
