import pytest

from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt.sessions import resolve_provider


def test_short_and_full_names():
    assert resolve_provider("cpu") == "CPUExecutionProvider"
    assert resolve_provider("CPUExecutionProvider") == "CPUExecutionProvider"
    assert resolve_provider("CPU") == "CPUExecutionProvider"


@pytest.mark.parametrize("name,package", [("dml", "onnxruntime-directml"), ("cuda", "onnxruntime-gpu"),
                                          ("webgpu", "webgpu")])
def test_unavailable_provider_names_the_package(name, package):
    with pytest.raises(TensorfoldError) as err:
        resolve_provider(name)
    text = str(err.value)
    assert "CPUExecutionProvider" in text and package in text and "\n" not in text


def test_unknown_provider():
    with pytest.raises(TensorfoldError, match="not available"):
        resolve_provider("NoSuchExecutionProvider")
