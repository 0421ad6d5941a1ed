"""ONNX -> torch -> ONNX: exact before training; write-back changes weights only."""

import numpy as np
import onnx
import pytest
import torch

from tensorfold.api import optimize
from tensorfold.demo import demo_model_path
from tensorfold.onnxrt.sessions import make_session
from tensorfold.recovery.onnx_torch import OnnxModule
from tests.fixtures import torch_models


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("rt")
    out = {
        "demo": demo_model_path(),
        "resnet": torch_models.export_resnet_like(d),
        "mobilenet": torch_models.export_mobilenet_like(d),
        "transformer": torch_models.export_transformer_block(d),
        "odd": torch_models.export_odd_convs(d),
    }
    for method in ("tucker", "cp", "tt"):
        optimize(demo_model_path(), d / f"{method}.onnx", method=method, ratio=3, progress=False)
        out[method] = d / f"{method}.onnx"
    return out


INPUTS = {
    "demo": (3, 1, 28, 28),
    "resnet": (2, 3, 32, 32),
    "mobilenet": (2, 3, 32, 32),
    "transformer": (2, 5, 64),
    "odd": (2, 3, 32, 32),
    "tucker": (3, 1, 28, 28),
    "cp": (3, 1, 28, 28),
    "tt": (3, 1, 28, 28),
}


@pytest.mark.parametrize("name", list(INPUTS))
def test_torch_module_matches_onnxruntime(models, name):
    model = onnx.load(models[name])
    module = OnnxModule(model)
    assert not module.frozen
    x = np.random.default_rng(0).standard_normal(INPUTS[name]).astype(np.float32)
    ref = make_session(model).run(None, {module.input_names[0]: x})[0]
    got = module(torch.from_numpy(x))[0].detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_write_back_changes_weights_only(models):
    model = onnx.load(models["tucker"])
    module = OnnxModule(model)
    untouched = module.write_back()
    assert [t.raw_data or t.float_data for t in untouched.graph.initializer] == [
        t.raw_data or t.float_data for t in model.graph.initializer
    ]
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)
    trained = module.write_back()
    assert [n.SerializeToString() for n in trained.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert [t.name for t in trained.graph.initializer] == [t.name for t in model.graph.initializer]
    assert trained.graph.input == model.graph.input and trained.graph.output == model.graph.output
    changed = [
        a.name
        for a, b in zip(trained.graph.initializer, model.graph.initializer)
        if a.SerializeToString() != b.SerializeToString()
    ]
    assert changed
    onnx.checker.check_model(trained, full_check=True)


def test_unknown_op_runs_frozen_with_a_warning():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Mish", ["h"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.warns(UserWarning, match="frozen"):
        module = OnnxModule(model)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(
        module(torch.from_numpy(x))[0].numpy(), make_session(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_matches_onnxruntime(direction):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dirs, hidden, inp, seq, batch = (2 if direction == "bidirectional" else 1), 5, 4, 6, 3
    inits = [
        numpy_helper.from_array(rng.standard_normal((dirs, 4 * hidden, inp)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((dirs, 4 * hidden, hidden)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.standard_normal((dirs, 8 * hidden)).astype(np.float32), "B"),
    ]
    node = helper.make_node("LSTM", ["x", "W", "R", "B"], ["y", "y_h", "y_c"], hidden_size=hidden, direction=direction)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, inp])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y_h", "y_c")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    module = OnnxModule(model)
    assert not module.frozen
    x = rng.standard_normal((seq, batch, inp)).astype(np.float32)
    ref = make_session(model).run(None, {"x": x})
    got = module(torch.from_numpy(x))
    for r, g in zip(ref, got):
        np.testing.assert_allclose(g.detach().numpy(), r, rtol=1e-4, atol=1e-5)
    got[0].sum().backward()
    assert module.params["W"].grad is not None


def test_a_frozen_node_keeps_an_omitted_optional_input_empty():
    """An LSTM with `clip` runs frozen; its sequence_lens is omitted and initial_h given after it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    hidden, inp, seq, batch = 5, 4, 6, 3
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, inp)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R"),
        numpy_helper.from_array(rng.standard_normal((1, 8 * hidden)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((1, batch, hidden)).astype(np.float32), "h0"),
    ]
    node = helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0"], ["y"], hidden_size=hidden, clip=0.5)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, inp])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    module = OnnxModule(model)
    x = rng.standard_normal((seq, batch, inp)).astype(np.float32)
    with pytest.warns(UserWarning, match="runs frozen"):
        got = module(torch.from_numpy(x))[0]
    np.testing.assert_allclose(got.numpy(), make_session(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_unsupported_variant_runs_frozen_with_a_warning():
    """An AveragePool with asymmetric pads has no kernel here: that node alone falls back to onnxruntime."""
    from onnx import TensorProto, helper

    from tensorfold.onnxrt.sessions import make_session

    nodes = [helper.make_node("AveragePool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], pads=[0, 0, 1, 1])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    module = OnnxModule(model)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    with pytest.warns(UserWarning, match="runs frozen"):
        got = module(torch.from_numpy(x))[0]
    np.testing.assert_allclose(got.numpy(), make_session(model).run(None, {"x": x})[0], rtol=1e-6)


@pytest.mark.parametrize(
    "starts, ends, steps",
    [([-1], [-100], [-1]), ([3], [0], [-1]), ([4], [-6], [-2]), ([10], [1], [-3]), ([0], [5], [2])],
)
def test_slice_with_negative_steps_matches_onnxruntime(starts, ends, steps):
    """torch.onnx exports F.pad with a reversed (step -1) Slice over the pads; it must run natively."""
    from onnx import TensorProto, helper, numpy_helper

    from tensorfold.onnxrt.sessions import make_session

    inits = [
        numpy_helper.from_array(np.array(v, np.int64), n)
        for n, v in (("starts", starts), ("ends", ends), ("axes", [1]), ("steps", steps))
    ]
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"], name="s")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = OnnxModule(model)(torch.from_numpy(x))[0]
    np.testing.assert_array_equal(got.numpy(), make_session(model).run(None, {"x": x})[0])


def test_a_node_the_trainer_cannot_run_is_named_by_op_and_node():
    """A failure inside the model names the op and the node (not "the data does not fit")."""
    import pytest
    from onnx import TensorProto, helper

    from tensorfold.recovery.onnx_torch import NodeFailed, OnnxModule

    pads = helper.make_tensor("pads", TensorProto.INT64, [6], [0, 0, 2, 0, 0, 2])
    node = helper.make_node("Pad", ["x", "pads"], ["y"], name="pad3d", mode="reflect")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 14])],
        [pads],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    module = OnnxModule(model)
    x = torch.zeros(1, 4, 2)  # too short to reflect 2: fails in torch and in onnxruntime
    with pytest.raises(NodeFailed, match="Pad node 'pad3d' failed"):
        module(x)


def test_intermediates_are_dropped_after_their_last_reader_subgraphs_included():
    from onnx import TensorProto, helper

    from tensorfold.recovery.onnx_torch import _last_uses

    branch = helper.make_graph(
        [helper.make_node("Relu", ["h"], ["b"])],
        "then",
        [],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["h"]),
        helper.make_node("Relu", ["x"], ["dead"]),
        helper.make_node("Greater", ["x", "x"], ["c"]),
        helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch),
    ]
    drops = _last_uses(nodes, ["y"])
    assert drops[1] == ("dead",)  # read by nobody: dropped at once
    assert "x" in drops[2] and "h" in drops[3] and "c" in drops[3]  # h is read inside the If's branches
    assert all("y" not in d for d in drops)  # outputs stay


@pytest.mark.parametrize("name", ["tucker", "transformer", "resnet"])
@pytest.mark.parametrize("segments", [2, 5])
def test_recompute_segments_give_the_same_outputs_and_gradients(models, name, segments):
    """Activation checkpointing (--recompute-segments) changes memory, not what is computed: the
    same outputs, captured features and gradients as one uninterrupted forward."""
    model = onnx.load(models[name])
    x = torch.from_numpy(np.random.default_rng(1).standard_normal(INPUTS[name]).astype(np.float32))
    results = []
    for k in (0, segments):
        module = OnnxModule(model)
        module.checkpoint_segments = k
        nodes = module.proto.graph.node
        capture = tuple(nodes[len(nodes) // 2].output[:1])  # a value in the middle
        outputs, feats = module(x, capture=capture)
        loss = sum((o.float() ** 2).mean() for o in outputs) + sum(f.float().abs().mean() for f in feats.values())
        loss.backward()
        grads = {k: p.grad.clone() for k, p in module.params.items() if p.grad is not None}
        results.append(([o.detach() for o in outputs], {k: v.detach() for k, v in feats.items()}, grads))
    (o0, f0, g0), (o1, f1, g1) = results
    assert g0 and g0.keys() == g1.keys() and f0.keys() == f1.keys() and f0
    for a, b in zip(o0, o1):
        torch.testing.assert_close(a, b)
    for k in f0:
        torch.testing.assert_close(f0[k], f1[k])
    for k in g0:
        torch.testing.assert_close(g0[k], g1[k], rtol=1e-4, atol=1e-6)
