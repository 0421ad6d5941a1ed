"""Property: any combination of optimize's options either writes a valid, verified model (exit 0)
or refuses in one `error:` line (exit 2) with nothing written; never a traceback, never exit 1,
and the input's bytes never change."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import onnx
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorfold.cli import main
from tensorfold.demo import demo_model_path

_budget = st.one_of(
    st.just([]),
    st.tuples(st.just("--rank"), st.sampled_from(["1", "4", "64", "100000", "0", "-2"])).map(list),
    st.tuples(st.just("--energy"), st.sampled_from(["0.5", "0.95", "1", "1.5", "nan"])).map(list),
    st.tuples(st.just("--ratio"), st.sampled_from(["1.5", "4", "1000", "0.5", "inf"])).map(list),
    st.just(["--evbmf"]),
)
_options = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["auto", "svd", "tucker", "cp", "tt", "none", "wavelet"]),
        "budget": _budget,
        "extra": st.lists(
            st.sampled_from(
                [
                    ["--force"],
                    ["--no-verify"],
                    ["--include", "*features.4*"],
                    ["--exclude", "*Gemm*"],
                    ["--json"],
                    ["--seed", "3"],
                    ["--shape", "input:1,1,28,28"],
                    ["--shape", "nope:1"],
                    ["--holdout", "0.3"],
                    ["--threads", "-1"],
                ]
            ),
            max_size=3,
        ),
    }
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(opts=_options)
def test_any_option_combination_is_a_model_or_one_line(opts):
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "m.onnx"
        shutil.copy(demo_model_path(), model)
        digest = hashlib.sha256(model.read_bytes()).hexdigest()
        out = Path(tmp) / "o.onnx"
        args = [
            "optimize",
            str(model),
            "-o",
            str(out),
            "--method",
            opts["method"],
            *opts["budget"],
            *[a for extra in opts["extra"] for a in extra],
        ]
        result = CliRunner().invoke(main, args)
        assert "Traceback" not in result.output
        assert result.exit_code in (0, 2), (args, result.output)
        if result.exit_code == 0:
            onnx.checker.check_model(onnx.load(out), full_check=True)
        else:
            lines = [line for line in result.output.strip().splitlines() if line.strip()]
            assert lines[-1].startswith("error: "), (args, result.output)
            assert not out.exists()
        assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
        assert sorted(p.name for p in Path(tmp).iterdir()) == sorted(["m.onnx"] + (["o.onnx"] if out.exists() else []))


def test_the_python_api_names_a_wrong_type():
    """From Python, ratio='2' failed as a comparison of str and int; a model path of another type
    as Path() of it."""
    import pytest

    from tensorfold.api import compare, optimize
    from tensorfold.demo import demo_model_path
    from tensorfold.errors import TensorfoldError

    with pytest.raises(TensorfoldError, match="ratio='2': a number is needed"):
        optimize(demo_model_path(), None, ratio="2", progress=False)
    with pytest.raises(TypeError, match="a model path is a str or an os.PathLike, not int"):
        optimize(123, None)
    with pytest.raises(TypeError, match="not list"):
        compare([demo_model_path()], demo_model_path())
    with pytest.raises(TensorfoldError, match="int8='false': True or False"):  # was: int8 on
        optimize(demo_model_path(), None, int8="false", progress=False)
    from tensorfold.optimize import OptimizeOptions

    # one string is one pattern or shape (was: split into one-letter ones, '*' matching everything)
    opts = OptimizeOptions(include="/features*", shapes="input:1,1,28,28")
    assert opts.include == ("/features*",) and opts.shapes == {"input": [1, 1, 28, 28]}


def test_the_python_api_checks_profile_recover_and_compress_arguments_before_any_work(tmp_path):
    import pytest
    import torch

    from tensorfold.api import compress, profile
    from tensorfold.demo import demo_model_path
    from tensorfold.errors import TensorfoldError
    from tensorfold.recovery.config import RecoverConfig

    with pytest.raises(TensorfoldError, match="runs=0: a whole number >= 1"):  # was: min() of an empty sequence
        profile(demo_model_path(), runs=0)
    with pytest.raises(TensorfoldError, match="lr='1e-3': a number is needed"):
        RecoverConfig(lr="1e-3")
    with pytest.raises(TensorfoldError, match="--torch-device cuda"):  # was: torch's AssertionError
        RecoverConfig(device="cuda" if not torch.cuda.is_available() else "cuda:99")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(TypeError, match="RecoverConfig or a dict"):
        compress(net, x, tmp_path / "e.onnx", recover_config=5)
    with pytest.raises(TensorfoldError, match="unknown method 'foo'"):
        compress(net, x, tmp_path / "e.onnx", method="foo")
    with pytest.raises(TensorfoldError, match="does not exist"):
        compress(net, x, tmp_path / "none" / "e.onnx")
    with pytest.raises(TypeError, match="takes a torch.nn.Module, not str"):
        compress("net", x, tmp_path / "e.onnx")
    with pytest.raises(TensorfoldError, match=r"does not run on example_input of shape \[1, 3, 28, 28\]: .*channels"):
        compress(net, torch.zeros(1, 3, 28, 28), tmp_path / "e.onnx")  # was: torch's bare RuntimeError
    assert list(tmp_path.iterdir()) == []  # each was refused before the export: nothing left behind
