"""Datasets for benchmarks, read from the files a distribution ships, never downloaded.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package, which puts the
four IDX files (gzipped) in ``/usr/share/datasets/fashion-mnist``. The IDX reader is
written here rather than borrowed so that loading the data needs nothing beyond numpy.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from tensorfold.calibration.data import (  # noqa: F401
    IMAGE_SUFFIXES,
    decode_image,
    folder_holds_arrays,
    image_files,
    load_image_folder,
)
from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt.inputs import read_npz
from tensorfold.onnxrt.numpy_files import array_files

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
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
        raise TensorfoldError(f"{root / images_name}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
        raise TensorfoldError(f"Fashion-MNIST {split} split in {root}: {len(images)} images but {len(labels)} labels")
    return images, labels.astype(np.int64)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` images -> float32 ``(N, 1, 28, 28)`` in [0, 1], the demo model's input."""
    images = np.asarray(images)
    return (images.astype(np.float32) / 255.0)[:, None, :, :]


def _find(root: Path, name: str) -> Path:
    for candidate in (root / (name + ".gz"), root / name):
        if candidate.is_file():
            return candidate
    raise TensorfoldError(f"Fashion-MNIST file {name}[.gz] missing from {root} ({_HOW_TO_GET})")


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
            f"{path}: not an IDX file of the expected kind (magic 0x{magic:08x}, expected 0x{expected_magic:08x})"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise TensorfoldError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != count:
        raise TensorfoldError(
            f"{path}: IDX header says shape {shape} ({count} bytes) "
            f"but the file holds {len(data) - header} bytes of data"
        )
    # A copy, so callers get a writable array (torch.from_numpy warns on read-only ones).
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


# --- other formats and the one entry point recovery uses ----------------------------------------

# What a CIFAR-10 python batch may contain besides builtin containers, bytes and numbers: numpy
# arrays. Any other global in the pickle (a planted os.system, say) is refused, never called.
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


def _restricted_unpickler(fh):
    import pickle

    class Restricted(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _CIFAR_GLOBALS:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing {module}.{name}: only numpy arrays are allowed")

    return Restricted(fh, encoding="bytes")


def load_cifar10(root: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from its python pickle batches (data_batch_1..5, test_batch): uint8 (N,32,32,3),
    read with a restricted unpickler (builtin containers, bytes, numbers, numpy arrays only)."""
    import pickle

    root = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise TensorfoldError(f"CIFAR-10: {path} not found (expected the python version's batches in {root})")
        try:
            with open(path, "rb") as fh:
                batch = _restricted_unpickler(fh).load()
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as exc:
            raise TensorfoldError(f"CIFAR-10: {path} is not a CIFAR-10 python batch ({exc})") from None
    return np.concatenate(images), np.concatenate(labels)


def load_npz(
    path: str | os.PathLike, input_name: str | None = None, input_rank: int | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrays of inputs: key `x` (or `inputs`/`images`, or the array named as the model's input
    `input_name` is, as `--inputs` files are), optional `y` (or `labels`); from one .npz or a folder
    of .npy/.npz files, whose arrays one axis short of `input_rank` are one sample each."""
    keys = [k for k in ("x", "inputs", "images", input_name) if k is not None]
    ranks = dict.fromkeys(keys, input_rank) if input_rank is not None else None
    data = read_npz(path, "--data", "x=images, y=labels", ranks=ranks)
    x_key = next((k for k in ("x", "inputs", "images", input_name) if k is not None and k in data), None)
    if x_key is None:
        named = f", nor {input_name} (the model's input)" if input_name not in (None, "x", "inputs", "images") else ""
        raise TensorfoldError(f"{path}: no array named x, inputs or images{named} (it has {sorted(data)})")
    y_key = next((k for k in ("y", "labels") if k in data), None)
    x = data[x_key]
    if x.ndim == 0 or len(x) == 0:
        raise TensorfoldError(f"{path}: array {x_key} holds no samples")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise TensorfoldError(f"{path}: array {x_key} holds NaN or infinite values")
    if y_key is None:
        return x, None
    y = data[y_key]
    if y.ndim != 1 or len(y) != len(x):
        raise TensorfoldError(f"{path}: {y_key} has shape {list(y.shape)}, expected one label per sample ({len(x)})")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all()):
        raise TensorfoldError(f"{path}: {y_key} must hold integer class labels (it holds {y.dtype})")
    if (y < 0).any():
        raise TensorfoldError(f"{path}: {y_key} holds negative labels (classes are numbered from 0)")
    return x, y.astype(np.int64)


class ImageFiles:
    """An image folder read as it is used: file names and labels in memory, pixels decoded per
    batch (a training run's memory does not grow with the folder). Indexing with a slice or an
    index array decodes those samples, ready for the model (`prepared`); `subset` keeps it lazy.
    Picklable, so DataLoader workers decode ahead of the training step."""

    def __init__(
        self,
        files: list[Path],
        labels: np.ndarray | None,
        size: tuple[int, int] | None,
        channels: int,
        input_shape: list | None = None,
        normalize=None,
    ):
        self.files, self.labels, self.channels = list(files), labels, channels
        self.size = size if size is not None else decode_image(self.files[0], None, channels).shape[:2]
        self.input_shape, self.normalize = input_shape, normalize

    def __len__(self) -> int:
        return len(self.files)

    def raw(self, idx) -> np.ndarray:
        """uint8 (n, H, W, C) as decoded, before the model's conversion."""
        return np.stack([decode_image(self.files[i], self.size, self.channels) for i in np.atleast_1d(idx)])

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.arange(len(self))[idx] if isinstance(idx, slice) else np.asarray(idx)
        raw = self.raw(idx)
        return raw if self.input_shape is None else prepare_inputs(raw, self.input_shape, self.normalize)

    def subset(self, idx) -> ImageFiles:
        idx = np.asarray(idx)
        return ImageFiles(
            [self.files[i] for i in idx],
            self.labels[idx] if self.labels is not None else None,
            self.size,
            self.channels,
            self.input_shape,
            self.normalize,
        )

    def prepared(self, input_shape: list, normalize=None) -> ImageFiles:
        return ImageFiles(self.files, self.labels, self.size, self.channels, input_shape, normalize)


class InputArrays:
    """Samples of a model with several inputs (token ids and an attention mask, ...): one array per
    input in the model's order, stacked along the first axis; indexing gives one array per input."""

    def __init__(self, names: list[str], arrays: list[np.ndarray]):
        self.names, self.arrays = list(names), list(arrays)

    def __len__(self) -> int:
        return len(self.arrays[0])

    def __getitem__(self, idx) -> tuple[np.ndarray, ...]:
        return tuple(a[idx] for a in self.arrays)

    def subset(self, idx) -> InputArrays:
        return InputArrays(self.names, [a[idx] for a in self.arrays])

    def describe(self) -> str:
        return ", ".join(f"{n} {list(a.shape[1:])} {a.dtype}" for n, a in zip(self.names, self.arrays))


def load_input_arrays(
    path: str | os.PathLike, names: list[str], ranks: dict[str, int] | None = None
) -> tuple[InputArrays, np.ndarray | None, str]:
    """An .npz (or a folder of them: `ranks`, the inputs' ranks, tell one sample from a batch)
    holding one array per model input, named as the inputs are (as `--inputs` files), samples along
    the first axis, and optional labels `y`/`labels`. Integers pass as int64, floats as float32."""
    path = Path(path)
    if not (path.suffix == ".npz" and path.is_file()) and not (path.is_dir() and folder_holds_arrays(path, "--data")):
        raise TensorfoldError(
            f"--data {path}: the model takes {len(names)} inputs ({', '.join(names)}); give an "
            ".npz (or a folder of them) with one array per input, named as the inputs"
        )
    data = read_npz(path, "--data", ranks=ranks)
    missing = [n for n in names if n not in data]
    if missing:
        raise TensorfoldError(f"{path}: no array for input(s) {', '.join(missing)} (it has {sorted(data)})")
    arrays = [data[n] for n in names]
    counts = {len(a) if a.ndim else 0 for a in arrays}
    if len(counts) != 1 or 0 in counts:
        raise TensorfoldError(
            f"{path}: the inputs' arrays must stack the same number of samples "
            f"({', '.join(f'{n}: {list(a.shape)}' for n, a in zip(names, arrays))})"
        )
    arrays = [a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32) for a in arrays]
    for n, a in zip(names, arrays):
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise TensorfoldError(f"{path}: array {n} holds NaN or infinite values")
    y_key = next((k for k in ("y", "labels") if k in data), None)
    y = None
    if y_key is not None:
        y = data[y_key]
        if y.ndim != 1 or len(y) != len(arrays[0]) or y.dtype.kind not in "iu" or (y < 0).any():
            raise TensorfoldError(f"{path}: {y_key} must hold one non-negative integer label per sample")
        y = y.astype(np.int64)
    x = InputArrays(names, arrays)
    return x, y, f"{path.name} ({len(x)} samples of {x.describe()}{'' if y is not None else ', unlabelled'})"


def samples_subset(x: Any, idx: Any) -> Any:
    """Samples `idx` of an array (copied), of ImageFiles (still lazy) or of InputArrays."""
    return x.subset(idx) if isinstance(x, (ImageFiles, InputArrays)) else x[idx]


def sample_shape(x) -> str:
    """What one sample looks like, for messages."""
    if isinstance(x, InputArrays):
        return x.describe()
    if isinstance(x, ImageFiles):
        return f"{list(x.size)} images, {x.channels} channel(s)"
    return str(list(np.shape(x)[1:]))


def folder_kind(spec: object) -> str | None:
    """What a --data folder holds: "cifar" (CIFAR-10 batches), "idx" (Fashion-MNIST IDX files),
    "arrays" (.npy/.npz files, read as one .npz), "images" (image files, labelled by subfolder or
    not); None for anything else."""
    path = Path(str(spec))
    if not path.is_dir():
        return None
    if (path / "data_batch_1").exists() or (path / "test_batch").exists():
        return "cifar"
    if any(path.glob("*idx3-ubyte*")):
        return "idx"
    if folder_holds_arrays(path, "--data"):
        return "arrays"
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
        return "images"
    return None


def load_data(
    spec: str,
    split: str = "train",
    size: tuple[int, int] | None = None,
    channels: int = 3,
    lazy: bool = False,
    classes: list[str] | None = None,
    input_name: str | None = None,
    input_rank: int | None = None,
) -> tuple[np.ndarray | ImageFiles, np.ndarray | None, str]:
    """`fashion-mnist`, a folder (Fashion-MNIST IDX files, CIFAR-10 batches, or images, labelled by
    subfolder or not), or an .npz file. `size`/`channels` apply to image folders; `lazy`: an image
    folder comes back as ImageFiles (decoded per batch) instead of one array; `classes`: an image
    folder's class subfolders in label order (see calibration.data.class_order); `input_name`: the
    model's input, an .npz array that may hold the inputs besides x/inputs/images; `input_rank`: its
    rank, which tells a NumPy file's one sample from a batch in a folder of them.

    Returns (inputs, labels or None, a description)."""
    if spec in ("fashion-mnist", "fmnist"):
        x, y = load_fashion_mnist(FASHION_MNIST_ROOT, split)
        return x, y, f"Fashion-MNIST {split} ({FASHION_MNIST_ROOT})"
    path = Path(spec)
    if path.suffix == ".npz":
        if not path.is_file():
            raise TensorfoldError(f"--data {path}: no such file")
        x, y = load_npz(path, input_name, input_rank)
        return x, y, f"{path.name} ({len(x)} inputs{'' if y is not None else ', unlabelled'})"
    if not path.is_dir():
        raise TensorfoldError(f"--data {spec}: not fashion-mnist, an .npz file or a folder")
    kind = folder_kind(path)
    if kind == "arrays":
        if split != "train":
            raise TensorfoldError(f"{path}: a folder of NumPy files has no separate {split} split")
        x, y = load_npz(path, input_name, input_rank)
        files = len(array_files(path))
        return x, y, f"{path} ({files} NumPy files, {len(x)} inputs{'' if y is not None else ', unlabelled'})"
    if kind == "cifar":
        x, y = load_cifar10(path, split)
        return x, y, f"CIFAR-10 {split} ({path})"
    if kind == "idx":
        x, y = load_fashion_mnist(path, split)
        return x, y, f"Fashion-MNIST {split} ({path})"
    if kind == "images":
        if split != "train":
            raise TensorfoldError(f"{path}: an image folder has no separate {split} split")
        if lazy:
            files, y, names = image_files(path, classes)
            x = ImageFiles(files, y, size, channels)
        else:
            x, y, names = load_image_folder(path, size, channels, classes)
        labels = f"{len(names)} classes" if y is not None else "unlabelled"
        return x, y, f"image folder {path} ({len(x)} images, {labels}{', read per batch' if lazy else ''})"
    raise TensorfoldError(
        f"--data {path}: no Fashion-MNIST IDX files, CIFAR-10 batches, images or .npy/.npz files found there"
    )


def fits_as_is(x: np.ndarray, input_shape: list) -> bool:
    """Whether samples `x` have the model's input shape already: as many axes, every fixed dim after
    the first equal, and at least one fixed (a model fixing none says nothing of its layout). Such
    samples are used as they are: a (N, 76, 32, 1) spectrogram window is no channels-last image."""
    fixed = [(i, d) for i, d in enumerate(input_shape[1:], 1) if isinstance(d, int) and d > 0]
    return np.ndim(x) == len(input_shape) and bool(fixed) and all(np.shape(x)[i] == d for i, d in fixed)


def _as_is(x: np.ndarray, input_shape: list) -> np.ndarray | None:
    """`x` itself where it fits the model's input as it is, or with the one axis of size 1 that it
    lacks (a grayscale (N, H, W) for (N, 1, H, W), a (N, 76, 32) for (N, 76, 32, 1)); else None."""
    if fits_as_is(x, input_shape):
        return x
    if np.ndim(x) == len(input_shape) - 1:
        for expanded in (x[:, None], x[..., None]):
            if fits_as_is(expanded, input_shape):
                return expanded
    return None


def adaptation(x: np.ndarray, input_shape: list) -> str | None:
    """What prepare_inputs will change to make these samples fit the model's input (channels,
    size), in words; None when they fit as they are. A user training on data that had to be
    converted should be told: a Fashion-MNIST digit stretched to 224x224 RGB is rarely what they meant."""
    if len(input_shape) != 4 or np.ndim(x) not in (3, 4) or _as_is(x, input_shape) is not None:
        return None
    shape = list(np.shape(x)[1:])
    if len(shape) == 2:
        shape = [1, *shape]
    elif shape[-1] in (1, 3) and shape[0] not in (1, 3):
        shape = [shape[2], shape[0], shape[1]]
    changes = []
    c, h, w = input_shape[1:4]
    if isinstance(c, int) and c > 0 and shape[0] != c and 1 in (shape[0], c):
        changes.append(f"{'repeated' if shape[0] == 1 else 'averaged'} from {shape[0]} channel(s) to {c}")
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and (shape[1], shape[2]) != (h, w):
        changes.append(f"resized from {shape[1]}x{shape[2]} to {h}x{w}")
    if not changes:
        return None
    return "the samples do not fit the model's input as they are: " + " and ".join(changes)


def image_channels(x: np.ndarray) -> int:
    """How many channels images of `x` have ((N, H, W): 1; NCHW or NHWC: their C), as prepare_inputs reads them."""
    return int(prepare_inputs(np.asarray(x)[:1], [1, -1, -1, -1]).shape[1])


def prepare_inputs(
    x: np.ndarray,
    input_shape: list,
    normalize: tuple[list[float], list[float]] | None = None,
) -> np.ndarray:
    """Images -> float32 (N, C, H, W) shaped like the model's input: [0, 1] scaling for uint8 (as
    torchvision's ToTensor), channels repeated or averaged to C, bilinear resize to H x W when the
    model fixes them, then (x - mean) / std if asked. Integer arrays other than uint8 (token ids)
    pass through as int64; samples already of the model's input shape keep their layout."""
    x = np.asarray(x)
    if np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8:
        return np.ascontiguousarray(x.astype(np.int64))  # token ids, class ids: passed through untouched
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    x = x.astype(np.float32)
    if len(input_shape) != 4:
        return x
    fitting = _as_is(x, input_shape)
    if fitting is not None:
        return _normalized(fitting, normalize)
    if x.ndim not in (3, 4):
        raise TensorfoldError(
            f"the data has shape {list(x.shape[1:])} per sample; the model takes images {list(input_shape[1:])}"
        )
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    c = input_shape[1] if isinstance(input_shape[1], int) and input_shape[1] > 0 else x.shape[1]
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = np.repeat(x, c, axis=1)
        elif c == 1:
            x = x.mean(axis=1, keepdims=True)
        else:
            raise TensorfoldError(f"the data has {x.shape[1]} channels, the model takes {c}")
    h, w = input_shape[2], input_shape[3]
    if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 and (x.shape[2], x.shape[3]) != (h, w):
        import torch
        import torch.nn.functional as F

        x = F.interpolate(torch.from_numpy(x), size=(h, w), mode="bilinear", align_corners=False).numpy()
    return _normalized(x, normalize)


def _normalized(x: np.ndarray, normalize: tuple[list[float], list[float]] | None) -> np.ndarray:
    """(x - mean) / std per channel (axis 1) if asked."""
    if normalize is not None:
        mean = np.asarray(normalize[0], np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(normalize[1], np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x)
