import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from tensorfold.datasets import FASHION_MNIST_ROOT, load_fashion_mnist, to_model_input
from tensorfold.errors import TensorfoldError


def write_idx(path: Path, array: np.ndarray, magic: int | None = None, gz: bool = True) -> None:
    """Write ``array`` (uint8) as an IDX file, the format of the MNIST/Fashion-MNIST files."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if magic is None:
        magic = 0x0800 | array.ndim
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_split(root: Path, prefix: str, n: int, gz: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz=gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return images, labels


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("split,prefix", [("train", "train"), ("test", "t10k")])
def test_reads_idx_files(tmp_path, gz, split, prefix):
    images, labels = make_split(tmp_path, prefix, n=7, gz=gz)
    got_images, got_labels = load_fashion_mnist(tmp_path, split=split)
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 28, 28)
    assert got_labels.dtype == np.int64 and got_labels.shape == (7,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.flags.writeable


def test_to_model_input():
    images = np.array([[[0] * 28] * 28, [[255] * 28] * 28], dtype=np.uint8)
    x = to_model_input(images)
    assert x.dtype == np.float32 and x.shape == (2, 1, 28, 28)
    assert x.min() == 0.0 and x.max() == 1.0


def test_missing_directory_names_the_package_and_the_flag(tmp_path):
    with pytest.raises(TensorfoldError) as e:
        load_fashion_mnist(tmp_path / "nowhere")
    message = str(e.value)
    assert "dataset-fashion-mnist" in message and "--data DIR" in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    make_split(tmp_path, "train", n=3, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(TensorfoldError, match="train-labels-idx1-ubyte.*dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, split="train")


def test_bad_magic(tmp_path):
    make_split(tmp_path, "t10k", n=3, gz=False)
    # Labels where images should be: a valid IDX file of the wrong kind.
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28)), magic=0x0801, gz=False)
    with pytest.raises(TensorfoldError, match="magic 0x00000801, expected 0x00000803"):
        load_fashion_mnist(tmp_path, split="test")


def test_truncated_file(tmp_path):
    make_split(tmp_path, "train", n=3, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TensorfoldError, match="header says shape"):
        load_fashion_mnist(tmp_path, split="train")


def test_count_mismatch(tmp_path):
    make_split(tmp_path, "train", n=3, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4), gz=True)
    with pytest.raises(TensorfoldError, match="3 images but 4 labels"):
        load_fashion_mnist(tmp_path, split="train")


def test_unknown_split(tmp_path):
    with pytest.raises(TensorfoldError, match="unknown Fashion-MNIST split"):
        load_fashion_mnist(tmp_path, split="validation")


@pytest.mark.skipif(not Path(FASHION_MNIST_ROOT).is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    images, labels = load_fashion_mnist(split="test")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.array_equal(np.bincount(labels), np.full(10, 1000))


def test_adaptation_says_what_prepare_inputs_changes():
    from tensorfold.datasets import adaptation

    gray = np.zeros((4, 28, 28), np.uint8)
    assert adaptation(gray, [1, 1, 28, 28]) is None
    said = adaptation(gray, [1, 3, 32, 32])
    assert "repeated from 1 channel(s) to 3" in said and "resized from 28x28 to 32x32" in said
    assert "averaged from 3" in adaptation(np.zeros((2, 16, 16, 3), np.float32), [1, 1, 16, 16])
    assert adaptation(np.zeros((2, 3, 8, 8), np.float32), [-1, 3, -1, -1]) is None  # dynamic dims fit anything


def test_samples_of_the_models_input_shape_are_used_as_they_are():
    """A wake-word embedding model takes (N, 76, 32, 1) spectrogram windows: they were read as
    channels-last images, repeated to 76 channels and resized to 32x1, every frame one average."""
    from tensorfold.datasets import adaptation, prepare_inputs

    rng = np.random.default_rng(0)
    windows = rng.standard_normal((5, 76, 32, 1)).astype(np.float32)
    assert adaptation(windows, [-1, 76, 32, 1]) is None
    assert np.array_equal(prepare_inputs(windows, [-1, 76, 32, 1]), windows)
    # the one size-1 axis missing, trailing or leading
    assert np.array_equal(prepare_inputs(windows[..., 0], [-1, 76, 32, 1]), windows)
    assert adaptation(windows[..., 0], [-1, 76, 32, 1]) is None
    gray = rng.random((3, 28, 28)).astype(np.float32)
    assert np.array_equal(prepare_inputs(gray, [1, 1, 28, 28]), gray[:, None])
    # channels-last images still become NCHW where the model fixes its channels
    nhwc = rng.random((2, 48, 320, 3)).astype(np.float32)
    assert np.array_equal(prepare_inputs(nhwc, [-1, 3, -1, -1]), nhwc.transpose(0, 3, 1, 2))
    assert np.array_equal(prepare_inputs(nhwc, [-1, 3, 48, 320]), nhwc.transpose(0, 3, 1, 2))


def test_an_npz_array_is_taken_as_inputs_only_by_a_known_name(tmp_path):
    """recover --data took a lone array of any name, where optimize and verify refuse it."""
    import numpy as np
    import pytest

    from tensorfold.datasets import load_npz
    from tensorfold.errors import TensorfoldError

    path = tmp_path / "d.npz"
    np.savez(path, image=np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(TensorfoldError, match=r"no array named x, inputs or images, nor pixels \(the model's input\)"):
        load_npz(path, "pixels")
    np.savez(path, pixels=np.zeros((2, 3, 4, 4), np.float32), y=np.array([0, 1]))
    x, y = load_npz(path, "pixels")
    assert x.shape == (2, 3, 4, 4) and list(y) == [0, 1]


def test_an_image_folder_of_mixed_sizes_says_it_resized_them(tmp_path, capsys):
    """A dynamic model takes the first image's size; the others were resized to it without a word."""
    import numpy as np
    from PIL import Image

    from tensorfold.calibration.data import load_image_folder

    for name, (w, h) in {"a.png": (40, 30), "b.png": (40, 30), "c.png": (20, 20)}.items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / name)
    x, _, _ = load_image_folder(tmp_path)
    assert x.shape == (3, 30, 40, 3)
    assert "1 of 3 images differ in size from the first (40x30)" in capsys.readouterr().err
