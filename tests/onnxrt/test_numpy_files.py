"""onnxrt/numpy_files.py: a folder of .npy/.npz files reads as the one .npz it would stack into."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tensorfold.calibration.data import load_samples
from tensorfold.demo import demo_model_path
from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt.inputs import load_inputs
from tests.helpers.cli import invoke

DEMO = str(demo_model_path())


def _two_inputs() -> onnx.ModelProto:
    """ids (batch, seq) int64 and mask (batch, seq) int64 -> their sum."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "mask"], ["y"])],
        "two",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
            helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "seq"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def images():
    return np.random.default_rng(0).random((10, 1, 28, 28), dtype=np.float32)


def test_one_sample_per_npy_file_reads_as_the_stacked_npz(tmp_path, images):
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, image in enumerate(images):
        np.save(folder / f"s{i:02d}.npy", image)  # (1, 28, 28): one axis short of the input's rank
    model = onnx.load(DEMO)
    (name,) = load_inputs(folder, model)
    assert np.array_equal(load_inputs(folder, model)[name], images)  # in path order


def test_batches_per_file_and_files_in_subfolders_join_in_path_order(tmp_path, images):
    for i, start in enumerate(range(0, 10, 4)):
        part = tmp_path / "samples" / f"part{i}"
        part.mkdir(parents=True)
        np.save(part / "batch.npy", images[start : start + 4])
    (arr,) = load_inputs(tmp_path / "samples", onnx.load(DEMO)).values()
    assert np.array_equal(arr, images)


def test_npz_files_name_each_input_of_a_multi_input_model(tmp_path):
    rng = np.random.default_rng(1)
    ids, mask = rng.integers(0, 100, (6, 8)), rng.integers(0, 2, (6, 8))
    for i in range(6):
        np.savez(tmp_path / f"{i}.npz", ids=ids[i], mask=mask[i])
    arrays = load_inputs(tmp_path, _two_inputs())
    assert np.array_equal(arrays["ids"], ids) and np.array_equal(arrays["mask"], mask)


@pytest.mark.parametrize(
    "files, says",
    [
        ({"a.npz": {"ids": np.zeros(8), "mask": np.zeros(8)}, "b.npz": {"ids": np.zeros(5), "mask": np.zeros(5)}},
         "array ids holds samples of [5] in b.npz and of [8] in a.npz; samples must share a shape"),
        ({"a.npz": {"ids": np.zeros(8), "mask": np.zeros(8)}, "b.npz": {"ids": np.zeros(8)}},
         "b.npz: holds arrays ['ids'], a.npz holds ['ids', 'mask']"),
        ({"a.npy": np.zeros(8)}, "a .npy file holds one array, and the model takes 2 inputs (ids, mask)"),
        ({"a.npy": np.zeros(8), "b.npz": {"ids": np.zeros(8), "mask": np.zeros(8)}}, "holds both .npy and .npz"),
        ({"a.npz": {"ids": np.zeros((1, 2, 8)), "mask": np.zeros((1, 2, 8))}},
         "array ids has shape [1, 2, 8]; the model's input takes 2 axes (a batch) or 1 (one sample)"),
        ({"notes.txt": "x"}, "no .npy or .npz files in it or in its subfolders"),
    ],
)  # fmt: skip
def test_a_folder_that_does_not_stack_is_one_line_naming_the_file(tmp_path, files, says):
    for name, content in files.items():
        if isinstance(content, dict):
            np.savez(tmp_path / name, **content)
        elif isinstance(content, str):
            (tmp_path / name).write_text(content)
        else:
            np.save(tmp_path / name, content)
    with pytest.raises(TensorfoldError) as info:
        load_inputs(tmp_path, _two_inputs(), "--calibration")
    assert says in str(info.value) and str(info.value).startswith(f"--calibration {tmp_path}")


def test_nothing_is_unpickled_and_no_link_leads_out(tmp_path):
    inside = tmp_path / "in"
    inside.mkdir()
    np.save(inside / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(TensorfoldError, match="object arrays, which would have to be unpickled"):
        load_inputs(inside, onnx.load(DEMO))
    (inside / "objects.npy").unlink()
    np.save(tmp_path / "outside.npy", np.zeros((1, 28, 28), np.float32))
    (inside / "link.npy").symlink_to(tmp_path / "outside.npy")
    with pytest.raises(TensorfoldError, match="outside the folder; copy the file in instead"):
        load_inputs(inside, onnx.load(DEMO))


def test_images_and_arrays_in_one_folder_are_refused_and_normalize_is_for_images(tmp_path, images):
    from PIL import Image

    np.save(tmp_path / "a.npy", images[0])
    with pytest.raises(TensorfoldError, match="--normalize applies to an image folder"):
        load_samples(tmp_path, onnx.load(DEMO), normalize=([0.5], [0.5]))
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(TensorfoldError, match=r"holds both images \(.png\) and arrays \(.npy\)"):
        load_samples(tmp_path, onnx.load(DEMO))


def test_optimize_and_recover_take_a_folder_as_they_take_the_npz(tmp_path, images):
    more = np.random.default_rng(2).random((30, 1, 28, 28), dtype=np.float32)
    samples = np.concatenate([images, more])
    np.savez(tmp_path / "all.npz", x=samples)
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, sample in enumerate(samples):
        np.save(folder / f"{i:03d}.npy", sample)
    args = ("optimize", DEMO, "--method", "svd", "--max-output-error", "0.1", "--json")
    reports = []
    for data, out in (("all.npz", "a.onnx"), ("folder", "b.onnx")):
        code, text = invoke(*args, "--calibration", tmp_path / data, "-o", tmp_path / out)
        assert code == 0, text
        reports.append(json.loads(text[text.index("{") :]))
    assert reports[0]["ranks"] == reports[1]["ranks"]
    assert "(40 NumPy files)" in reports[1]["verification"]["inputs"]
    a, b = (onnx.load(str(tmp_path / o)).graph.initializer for o in ("a.onnx", "b.onnx"))
    assert all(np.array_equal(onnx.numpy_helper.to_array(x), onnx.numpy_helper.to_array(y)) for x, y in zip(a, b))
    code, text = invoke(
        "recover", tmp_path / "b.onnx", "--teacher", DEMO, "--data", folder, "--max-steps", "1", "--lr", "1e-4",
        "-o", tmp_path / "r.onnx",
    )  # fmt: skip
    assert code == 0, text
    assert "40 NumPy files, 40 inputs, unlabelled" in " ".join(text.split())


def test_recover_reads_a_folder_for_a_multi_input_model(tmp_path):
    from tensorfold.datasets import load_input_arrays
    from tensorfold.onnxrt.inputs import input_ranks

    ids = np.arange(24).reshape(3, 8)
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", ids=ids[i], mask=np.ones(8, np.int64), y=np.int64(i))
    x, y, _ = load_input_arrays(tmp_path, ["ids", "mask"], input_ranks(_two_inputs()))
    assert np.array_equal(x.arrays[0], ids) and y is not None and list(y) == [0, 1, 2]
