import pytest

from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt.sessions import resolve_provider


def test_short_and_full_names():
    assert resolve_provider("cpu") == "CPUExecutionProvider"
    assert resolve_provider("CPUExecutionProvider") == "CPUExecutionProvider"
    assert resolve_provider("CPU") == "CPUExecutionProvider"


@pytest.mark.parametrize(
    "name,package", [("dml", "onnxruntime-directml"), ("cuda", "onnxruntime-gpu"), ("webgpu", "webgpu")]
)
def test_unavailable_provider_names_the_package(name, package):
    with pytest.raises(TensorfoldError) as err:
        resolve_provider(name)
    text = str(err.value)
    assert "CPUExecutionProvider" in text and package in text and "\n" not in text


def test_unknown_provider():
    with pytest.raises(TensorfoldError, match="not available"):
        resolve_provider("NoSuchExecutionProvider")


def test_a_fixed_first_dim_beside_a_dynamic_batch_is_not_a_fixed_batch():
    """Silero VAD: input [batch, samples], state [2, batch, 128], sr a scalar: the batch is free."""
    from onnx import TensorProto, helper

    from tensorfold.onnxrt.batching import fixed_batch

    def model(*inputs):
        vis = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs]
        graph = helper.make_graph(
            [helper.make_node("Identity", [inputs[0][0]], ["y"])],
            "g",
            vis,
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        )
        return helper.make_model(graph)

    assert fixed_batch(model(("input", ["batch", 512]), ("state", [2, "batch", 128]), ("sr", []))) is None
    assert fixed_batch(model(("ids", [1, 128]), ("mask", [1, 128]))) == 1
    assert fixed_batch(model(("image", [8, 3, 32, 32]), ("sr", []))) == 8
