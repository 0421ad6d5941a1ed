"""Calibration samples: an .npz with one array per model input, a folder of .npy/.npz files (read
as one .npz, onnxrt/numpy_files.py), or a folder of images.

Every problem with the data (names, shapes, dtypes, emptiness, NaN, too few samples to hold any
out) is found here, before any factorization runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tensorfold.errors import TensorfoldError
from tensorfold.log import warn
from tensorfold.onnxrt.inputs import as_input, load_inputs, model_inputs
from tensorfold.onnxrt.numpy_files import ARRAY_SUFFIXES, array_files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DEFAULT_HOLDOUT = 0.25


@dataclass
class Samples:
    """N samples per model input, stacked along the first axis."""

    arrays: dict[str, np.ndarray]
    source: str

    @property
    def n(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def take(self, index: np.ndarray) -> Samples:
        return Samples({k: v[index] for k, v in self.arrays.items()}, self.source)


def load_samples(
    path: str | os.PathLike[str],
    model: onnx.ModelProto,
    *,
    option: str = "--calibration",
    shapes: dict[str, list[int]] | None = None,
    normalize: tuple[Any, Any] | None = None,
) -> Samples:
    """Read and check samples for `model`: an .npz (one array per input, `x` for a single-input
    model), a folder of .npy/.npz files (one sample or a batch each, joined), or a folder of
    PNG/JPEG images (scaled to [0, 1], resized to the model's input, normalized by `normalize` =
    (mean, std) per channel or scalar)."""
    path = Path(path)
    if path.is_dir() and folder_holds_arrays(path, option):
        if normalize is not None:
            raise TensorfoldError(
                f"--normalize applies to an image folder; {option} {path} holds arrays, "
                "normalize them before saving them"
            )
        samples = _npz_samples(path, model, option)
    elif path.is_dir():
        samples = _image_samples(path, model, option, shapes or {}, normalize)
    elif path.is_file():
        if normalize is not None:
            raise TensorfoldError(
                f"--normalize applies to an image folder; {option} {path} is an .npz, "
                "normalize its arrays before saving them"
            )
        samples = _npz_samples(path, model, option)
    else:
        raise TensorfoldError(f"{option} {path}: no such file or folder")
    check_samples(samples, model, option)
    return samples


def folder_holds_arrays(path: Path, option: str) -> bool:
    """Whether a data folder holds NumPy files (.npy/.npz) rather than images; one holding both is
    refused, since which of them are the samples is a guess."""
    suffixes = {p.suffix.lower() for p in path.rglob("*")}
    arrays, images = suffixes & set(ARRAY_SUFFIXES), suffixes & set(IMAGE_SUFFIXES)
    if arrays and images:
        raise TensorfoldError(
            f"{option} {path}: holds both images ({', '.join(sorted(images))}) and arrays "
            f"({', '.join(sorted(arrays))}); keep the samples of one kind in the folder"
        )
    return bool(arrays)


def _npz_samples(path: Path, model: onnx.ModelProto, option: str) -> Samples:
    arrays = load_inputs(path, model, option)
    source = str(path)
    if path.is_dir():
        source += f" ({len(array_files(path))} NumPy files)"
    return Samples(arrays, source)


def check_samples(samples: Samples, model: onnx.ModelProto, option: str = "--calibration") -> None:
    """Shapes, dtypes, counts and values fit the model; float arrays are cast to the input's type."""
    counts = set()
    for v in model_inputs(model):
        arr = samples.arrays[v.name]
        where = f"{option} {samples.source}: input '{v.name}'"
        samples.arrays[v.name] = arr = as_input(v, arr, where)
        if arr.ndim == 0:  # a rank-0 input: calibration needs samples along a first axis
            raise TensorfoldError(f"{where} is a single value; samples go along the first axis of an array")
        if arr.shape[0] == 0:
            raise TensorfoldError(f"{where} holds no samples")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise TensorfoldError(f"{where} holds NaN or Inf values")
        counts.add(arr.shape[0])
    if len(counts) > 1:
        raise TensorfoldError(f"{option} {samples.source}: the inputs have different sample counts {sorted(counts)}")


def split_holdout(
    samples: Samples, share: float = DEFAULT_HOLDOUT, seed: int = 0, option: str = "--calibration"
) -> tuple[Samples, Samples]:
    """(fit, held out): a seeded share of the samples (at least one) is kept for verification only."""
    n = samples.n
    if n < 2:
        raise TensorfoldError(
            f"{option} {samples.source}: {n} sample; at least 2 are needed (one to fit on, one held out to verify on)"
        )
    held = min(max(1, int(round(n * share))), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return samples.take(np.sort(order[held:])), samples.take(np.sort(order[:held]))


# --- images -----------------------------------------------------------------------------------


CLASSES_FILE = "classes.txt"


def class_order(root: Path, classes: list[str] | None = None) -> list[str]:
    """The class subfolders of `root` in label order: `classes` when given, else the names listed in
    root/classes.txt (one per line), else sorted by name (torchvision's ImageFolder rule, which is
    often not the order of a pretrained model's outputs)."""
    found = sorted(d.name for d in root.iterdir() if d.is_dir())
    source = "--classes"
    if classes is None and (root / CLASSES_FILE).is_file():
        classes = [line.strip() for line in (root / CLASSES_FILE).read_text().splitlines() if line.strip()]
        source = str(root / CLASSES_FILE)
    if classes is None:
        return found
    twice = sorted({c for c in classes if classes.count(c) > 1})
    if twice:
        raise TensorfoldError(f"{source} names {', '.join(twice)} more than once")
    missing = [c for c in classes if c not in found]
    if missing:
        raise TensorfoldError(f"{source} names {', '.join(missing[:5])}, not a subfolder of {root}")
    unlisted = [
        d for d in found if d not in classes and any(p.suffix.lower() in IMAGE_SUFFIXES for p in (root / d).iterdir())
    ]
    if unlisted:
        raise TensorfoldError(f"{root}/{unlisted[0]} holds images but {source} does not name it")
    return list(classes)


def image_files(
    root: str | os.PathLike[str], classes: list[str] | None = None
) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """The images of a folder: `root/<class>/*.png` (labelled by subfolder, in class_order) or
    directly in `root/` (unlabelled). (files, labels or None, class names); nothing decoded."""
    root = Path(root)
    classes = class_order(root, classes)
    labelled = [
        (p, i)
        for i, c in enumerate(classes)
        for p in sorted((root / c).iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    files = labelled or [(p, -1) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise TensorfoldError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or in its subfolders")
    inside = root.resolve()
    for p, _ in files:
        # as ONNX external data: a link out of the folder (another folder's file, /etc/passwd) is refused
        if p.is_symlink() or p.parent.is_symlink():
            target = p.resolve()
            if not target.is_relative_to(inside):
                raise TensorfoldError(
                    f"{root}: {p.relative_to(root)} links to {target}, outside the folder; copy the image in instead"
                )
    labels = np.array([i for _, i in files], dtype=np.int64) if labelled else None
    return [p for p, _ in files], labels, classes if labelled else []


def decode_image(path: Path, size: tuple[int, int] | None, channels: int) -> np.ndarray:
    """One image as uint8 (H, W, C): converted to `channels` (1: grayscale, 3: RGB), resized to
    `size` (H, W) when given (bilinear)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None and (img.height, img.width) != tuple(size):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise TensorfoldError(f"{path}: not a readable image ({exc})") from None
    except Image.DecompressionBombError as exc:  # a header declaring 20000x20000: refused before decoding
        raise TensorfoldError(f"{path}: {str(exc).splitlines()[0][:200]}") from None
    return arr[..., None] if arr.ndim == 2 else arr


def load_image_folder(
    root: str | os.PathLike[str],
    size: tuple[int, int] | None = None,
    channels: int = 3,
    classes: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """Every image of a folder (see image_files) decoded: converted to `channels`, resized to
    `size` (H, W) when given, else all to the first image's size. uint8 (N, H, W, C)."""
    files, labels, classes = image_files(root, classes)
    if size is None:
        first = decode_image(files[0], None, channels)
        size = first.shape[:2]
        from PIL import Image

        def own_size(path: Path) -> tuple[int, int]:
            with Image.open(path) as image:  # the header only: no pixels decoded
                return image.height, image.width

        others = sum(1 for p in files[1:] if own_size(p) != tuple(size))
        if others:
            warn(
                f"{root}: {others} of {len(files)} images differ in size from the first "
                f"({size[1]}x{size[0]}) and were resized to it (the model's size is dynamic; "
                "--shape NAME:N,C,H,W picks another)"
            )
    return np.stack([decode_image(p, size, channels) for p in files]), labels, classes


def _image_samples(
    root: Path, model: onnx.ModelProto, option: str, shapes: dict[str, list[int]], normalize: tuple[Any, Any] | None
) -> Samples:
    inputs = model_inputs(model)
    if len(inputs) != 1:
        raise TensorfoldError(
            f"{option} {root}: an image folder feeds a single-input model; this one has "
            f"{len(inputs)} inputs, pass an .npz with one array per input"
        )
    v = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in v.type.tensor_type.shape.dim]
    if v.name in shapes:
        dims = list(shapes[v.name])
    if len(dims) != 4:
        raise TensorfoldError(
            f"{option} {root}: images need a model input of rank 4 (N, C, H, W); '{v.name}' has rank {len(dims)}"
        )
    channels_last = dims[3] in (1, 3) and dims[1] not in (1, 3)
    c, h, w = (dims[3], dims[1], dims[2]) if channels_last else (dims[1], dims[2], dims[3])
    if c not in (1, 3, None):
        raise TensorfoldError(f"{option} {root}: the model takes {c} channels; images give 1 or 3")
    size = (h, w) if h and w else None
    images, _, _ = load_image_folder(root, size, c or 3)
    x = images.astype(np.float32) / 255.0  # (N, H, W, C)
    if normalize is not None:
        mean, std = (np.asarray(p, np.float32) for p in normalize)
        if np.any(std == 0):
            raise TensorfoldError("--normalize: a standard deviation of 0")
        if mean.size not in (1, x.shape[-1]) or std.size not in (1, x.shape[-1]):
            raise TensorfoldError(f"--normalize gives {mean.size} mean(s) for {x.shape[-1]} channels")
        x = (x - mean) / std
    if not channels_last:
        x = x.transpose(0, 3, 1, 2)
    how = f"{len(x)} images of {x.shape[1:]}" + ("" if size else " (the first image's size: the model's is dynamic)")
    return Samples({v.name: np.ascontiguousarray(x)}, f"{root} ({how})")


def parse_normalize(text: str | None) -> tuple[list[float], list[float]] | None:
    """`MEAN,STD` or `M1,M2,M3,S1,S2,S3` -> (means, stds)."""
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (2, 6) or not all(np.isfinite(values)):
        raise TensorfoldError(f"--normalize '{text}': expected MEAN,STD or three means then three stds")
    half = len(values) // 2
    if any(v <= 0 for v in values[half:]):
        raise TensorfoldError(f"--normalize '{text}': a standard deviation must be > 0")
    return values[:half], values[half:]
