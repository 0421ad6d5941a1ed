"""Recovery checkpoints: written atomically, loaded with weights_only (a planted file runs no code),
refused when written for another model."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tensorfold.errors import TensorfoldError
from tensorfold.outputs import OutputFolder, atomic_path
from tensorfold.recovery.config import RecoverConfig
from tensorfold.recovery.history import History

if TYPE_CHECKING:
    import onnx

    from tensorfold.recovery.finetune import _Learner  # finetune imports this module

# what recovery writes in OUTPUT.ckpt/ (outputs.OutputFolder: nothing else there is touched, and a
# last.pt tensorfold did not write there is refused before any work, --resume or not)
CHECKPOINT_NAMES = ("last.pt", "best.pt", "best.peer*.pt", "history.json", "history.png", "gen*")


def checkpoint_folder(path: Path) -> OutputFolder:
    return OutputFolder(path, "checkpoint folder", CHECKPOINT_NAMES)


def load_checkpoint(path: Path, device: str | torch.device) -> Any:
    """A checkpoint's tensors, numbers and strings only (weights_only=True): a planted file cannot
    run code when it is unpickled; anything else is refused with one line."""
    import pickle

    try:
        return torch.load(path, weights_only=True, map_location=device)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        IndexError,
        KeyError,
        TypeError,
        AttributeError,
    ) as exc:  # what torch.load raises on an empty or foreign file
        raise TensorfoldError(
            f"{path}: not a tensorfold checkpoint of plain tensors "
            f"({(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]})"
        ) from None


def model_fingerprint(model: onnx.ModelProto) -> str:
    """What a checkpoint must match to be loaded into this model: its trainable tensors' names and
    shapes (a checkpoint from another model is refused by name, not by a size-mismatch traceback)."""
    import hashlib

    desc = sorted((t.name, tuple(t.dims)) for t in model.graph.initializer)
    return hashlib.sha256(repr(desc).encode()).hexdigest()[:16]


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temp file and a rename: a full disk or a kill never leaves a torn file."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's zip writer reports a failed write as "unexpected pos ..."
            import errno
            import os
            import shutil

            if shutil.disk_usage(tmp.parent).free < 1 << 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
            raise TensorfoldError(f"cannot write {path}: {str(exc).splitlines()[0][:200]}") from None


def save_checkpoint(
    path: Path,
    learners: list[_Learner],
    step: int,
    history: History,
    fingerprint: str,
    settings: Mapping[str, Any] | None = None,
) -> None:
    """The student's weights, optimizer and best at the top level; each peer's beside them; the
    run's settings (what a resume must repeat)."""
    main = learners[0]
    save_atomic(
        {
            "settings": dict(settings or {}),
            "params": main.module.state_dict(),
            "optimizer": main.opt.state_dict(),
            "step": step,
            "history": history.as_dict(),
            "best": main.best,
            "model": fingerprint,
            "peers": [
                {"params": ln.module.state_dict(), "optimizer": ln.opt.state_dict(), "best": ln.best}
                for ln in learners[1:]
            ],
        },
        path,
    )


def resume_checkpoint(
    ckpt: Path,
    checkpoint_dir: Path,
    learners: list[_Learner],
    cfg: RecoverConfig,
    fingerprint: str,
    settings: Mapping[str, Any] | None = None,
) -> tuple[int, History]:
    """(step, history) of the checkpoint, every model's weights, optimizer and best loaded from it."""
    if not ckpt.exists():
        raise TensorfoldError(f"--resume: no checkpoint at {ckpt}")
    state = load_checkpoint(ckpt, cfg.device)
    if not isinstance(state, dict) or not {"params", "optimizer", "step", "history", "best"} <= set(state):
        raise TensorfoldError(f"{ckpt}: not a tensorfold recovery checkpoint")
    if fingerprint and state.get("model", fingerprint) != fingerprint:
        raise TensorfoldError(
            f"{ckpt} was written for another model; remove {checkpoint_dir} or recover into another output"
        )
    stored = state.get("settings") or {}
    for key, value in (settings or {}).items():
        if key in stored and stored[key] != value:
            raise TensorfoldError(
                f"--resume: {ckpt} was trained with {key.replace('_', ' ')} {_shown(stored[key])}, this run "
                f"has {_shown(value)}; resume with the same settings, or remove {checkpoint_dir}"
            )
    peers = state.get("peers") or []
    if len(peers) != len(learners) - 1:
        raise TensorfoldError(
            f"{ckpt} holds {len(peers)} peer(s), this run has {len(learners) - 1}: resume with the same --peer models"
        )
    parts = [{"params": state["params"], "optimizer": state["optimizer"], "best": state["best"]}, *peers]
    for ln, part in zip(learners, parts):
        load_params(ln.module, part["params"], ckpt)
        try:
            ln.opt.load_state_dict(part["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise TensorfoldError(f"{ckpt}: optimizer state does not fit ({str(exc).splitlines()[0][:160]})") from None
        ln.best = part["best"]
    try:
        history = History(**state["history"])
    except (KeyError, TypeError) as exc:
        raise TensorfoldError(f"{ckpt}: history does not fit ({str(exc).splitlines()[0][:160]})") from None
    return int(state["step"]), history


def load_params(module: torch.nn.Module, params: Mapping[str, Any], path: Path) -> None:
    try:
        module.load_state_dict(params)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise TensorfoldError(
            f"{path} holds weights of another model ({str(exc).splitlines()[0][:160]}); "
            "remove it or recover into another output"
        ) from None


def _shown(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else repr(value)


def stored_settings(path: Path) -> dict[str, Any]:
    """The settings a checkpoint was trained with ({} where there is none, or none recorded)."""
    if not path.exists():
        return {}
    state = load_checkpoint(path, "cpu")
    stored = state.get("settings") if isinstance(state, dict) else None
    return dict(stored) if isinstance(stored, dict) else {}


def checkpoint_step(path: Path, device: str | torch.device) -> int | None:
    state = load_checkpoint(path, device)
    return state.get("step") if isinstance(state, dict) else None
