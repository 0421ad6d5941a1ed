"""Datasets for benchmarks, read from the files a distribution ships, never downloaded.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package, which puts the
four IDX files (gzipped) in ``/usr/share/datasets/fashion-mnist``. The IDX reader is
written here rather than borrowed so that loading the data needs nothing beyond numpy.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from tensorfold.errors import TensorfoldError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
_IMAGES_MAGIC = 0x00000803
_LABELS_MAGIC = 0x00000801

_HOW_TO_GET = "install the Debian package dataset-fashion-mnist or pass --data DIR"


def load_fashion_mnist(
    root: str | os.PathLike | None = FASHION_MNIST_ROOT, split: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` of one split: uint8 ``(N, 28, 28)`` and int64 ``(N,)``.

    ``root`` holds the IDX files, gzipped or not (``train-images-idx3-ubyte[.gz]``, ...).
    """
    if split not in _FILES:
        raise TensorfoldError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
    root = Path(FASHION_MNIST_ROOT if root is None else root)
    if not root.is_dir():
        raise TensorfoldError(f"Fashion-MNIST not found: no directory {root} ({_HOW_TO_GET})")
    images_name, labels_name = _FILES[split]
    images = _read_idx(_find(root, images_name), _IMAGES_MAGIC)
    labels = _read_idx(_find(root, labels_name), _LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise TensorfoldError(
            f"{root / images_name}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28"
        )
    if len(images) != len(labels):
        raise TensorfoldError(
            f"Fashion-MNIST {split} split in {root}: {len(images)} images but {len(labels)} labels"
        )
    return images, labels.astype(np.int64)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` images -> float32 ``(N, 1, 28, 28)`` in [0, 1], the demo model's input."""
    images = np.asarray(images)
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def _find(root: Path, name: str) -> Path:
    for candidate in (root / (name + ".gz"), root / name):
        if candidate.is_file():
            return candidate
    raise TensorfoldError(
        f"Fashion-MNIST file {name}[.gz] missing from {root} ({_HOW_TO_GET})"
    )


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise TensorfoldError(f"{path}: cannot read IDX file ({e})") from None

    if len(data) < 4:
        raise TensorfoldError(f"{path}: truncated IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise TensorfoldError(
            f"{path}: not an IDX file of the expected kind "
            f"(magic 0x{magic:08x}, expected 0x{expected_magic:08x})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise TensorfoldError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != count:
        raise TensorfoldError(
            f"{path}: IDX header says shape {shape} ({count} bytes) "
            f"but the file holds {len(data) - header} bytes of data"
        )
    # A copy, so callers get a writable array (torch.from_numpy warns on read-only ones).
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()
