"""`optimize --recover`'s checkpoints (OUTPUT.ckpt/ or --checkpoints DIR): an interrupted search
resumes where it stopped (`--resume`).

- search.json: the settings recovery trains with and the learning rate the first candidate's runs
  chose; a resume with other settings is refused (its candidates would not be the ones trained
  here).
- cand-KEY.onnx and cand-KEY.json: one candidate once recovered, and how (steps, seconds, stop).
  KEY hashes the candidate before recovery: a resumed search builds the same candidates in the same
  order (the factorization is deterministic) and finds each trained one by its content, whatever the
  bound; a changed factorization is simply a new candidate.
- cand-KEY/: that candidate's training checkpoints while it trains (recovery/checkpoints.py): a
  search interrupted mid-candidate continues that candidate from its last evaluation. The first
  candidate trains once per rate tried, in cand-KEY-lrRATE/: finished runs are replayed from there.

Everything read back is ONNX, JSON or a weights_only checkpoint: nothing here unpickles code. The
folder goes when the optimize run succeeds (its output holds the result).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from tensorfold.errors import TensorfoldError
from tensorfold.graph.io import save_model
from tensorfold.onnxrt import large
from tensorfold.outputs import MANIFEST, OutputFolder, write_json_atomic
from tensorfold.recovery.checkpoints import checkpoint_folder

SEARCH_NAMES = ("search.json", "cand-*")
STATE = "search.json"


def candidate_key(model: onnx.ModelProto) -> str:
    """A candidate's identity: its nodes and weights, hashed a message at a time (a model past
    protobuf's 2 GB serializes only in parts)."""
    digest = hashlib.sha256()
    for part in (*model.graph.node, *model.graph.initializer):
        digest.update(part.SerializeToString(deterministic=True))
    return digest.hexdigest()[:16]


@dataclass
class Done:
    """A candidate recovered by this search or the interrupted one it resumes."""

    model: onnx.ModelProto
    info: dict[str, Any]  # Recovered.as_dict() of the run that trained it
    resumed: bool = True  # recovered by the interrupted search (False: by this one, met again)


class SearchCheckpoints:
    """The folder of one optimize run's recovered candidates."""

    def __init__(self, path: Path, resume: bool, settings: dict[str, Any]):
        self.path, self.resume, self.settings = Path(path), resume, settings
        self.folder = OutputFolder(self.path, "--checkpoints", SEARCH_NAMES)
        self.saved: set[str] = set()  # the candidates this run recovered itself

    def start(self) -> dict[str, Any]:
        """Checked before any work: what the interrupted run recorded (its rate), or {} for a new
        search. A folder holding an earlier search is not overwritten without --resume."""
        self.folder.check()
        state = self.path / STATE
        owned = self.folder.owned() if self.path.is_dir() else set()
        if not self.resume:
            if owned:
                raise TensorfoldError(
                    f"{self.path} holds the checkpoints of an interrupted search: add --resume to continue "
                    "it, or remove the folder to start over"
                )
            return {}
        if STATE not in owned or not state.is_file():
            raise TensorfoldError(f"--resume: no search checkpoints in {self.path}")
        try:
            data = json.loads(state.read_text())
            before = data["settings"]
        except (OSError, ValueError, KeyError, TypeError):
            raise TensorfoldError(f"--resume: {state} is not a tensorfold search state") from None
        for name, value in self.settings.items():
            if before.get(name) != value:
                raise TensorfoldError(
                    f"--resume: {self.path} was written by a search with {name} {before.get(name)!r}, "
                    f"this one has {value!r}; run it with the same settings, or remove the folder"
                )
        return data

    def record(self, **fields: Any) -> None:
        """search.json: the settings and what the run chose (the learning rate)."""
        write_json_atomic(self.folder.file(STATE), {"settings": self.settings, **fields})

    def done(self, key: str) -> Done | None:
        model_file, info_file = self.path / f"cand-{key}.onnx", self.path / f"cand-{key}.json"
        owned = self.folder.owned()
        if not {model_file.name, info_file.name} <= owned or not (model_file.is_file() and info_file.is_file()):
            return None
        try:
            return Done(onnx.load(str(model_file)), json.loads(info_file.read_text()), key not in self.saved)
        except (OSError, ValueError, DecodeError):  # unreadable: train the candidate again
            return None

    def training(self, key: str) -> tuple[OutputFolder, bool]:
        """The candidate's training checkpoint folder, and whether it holds a checkpoint to resume."""
        path = self.folder.file(f"cand-{key}")
        folder = checkpoint_folder(path).check()
        return folder, self.resume and (path / "last.pt").is_file() and "last.pt" in folder.owned()

    def save(self, key: str, model: onnx.ModelProto, info: dict[str, Any]) -> None:
        if large.is_large(model):  # its weights go beside it: listed as this folder's too
            self.folder.file(f"cand-{key}.onnx.data")
        save_model(model, self.folder.file(f"cand-{key}.onnx"))
        write_json_atomic(self.folder.file(f"cand-{key}.json"), info)
        self.saved.add(key)
        # its model is kept: the steps are not needed (nor those of the first candidate's runs by rate)
        for path in [self.path / f"cand-{key}", *self.path.glob(f"cand-{key}-lr*")]:
            if path.is_dir() and path.name in self.folder.owned():
                shutil.rmtree(path, ignore_errors=True)

    def abandoned(self) -> bool:
        """The run failed or was stopped: its checkpoints stay for --resume once a candidate has
        any (True); a folder holding only the settings goes (nothing to resume)."""
        if any(name.startswith("cand-") for name in self.folder.owned()):
            return True
        self.finished()
        return False

    def finished(self) -> None:
        """The run succeeded: the folder's checkpoints go (the output holds the result)."""
        for name in self.folder.owned() | {MANIFEST}:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists() or target.is_symlink():
                target.unlink()
        try:
            self.path.rmdir()  # only when nothing else is there
        except OSError:
            pass
