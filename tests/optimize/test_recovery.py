"""`optimize --recover STEPS`: each candidate fine-tuned (label-free, from the input model, on the
calibration fit share) before it is judged on the held-out share; bad combinations refused first."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tensorfold.api import optimize
from tensorfold.datasets import load_data
from tensorfold.demo import demo_model_path
from tests.helpers.cli import assert_user_error, invoke

DEMO = demo_model_path()


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Real Fashion-MNIST test images as the user's calibration samples (scaled as the demo expects)."""
    x, _, _ = load_data("fashion-mnist", "test")
    path = tmp_path_factory.mktemp("cal") / "fm.npz"
    np.savez(path, x=(np.asarray(x[:160]).reshape(-1, 1, 28, 28) / 255.0).astype(np.float32))
    return path


def test_recovery_lowers_the_held_out_error_at_the_ratio_asked(samples, tmp_path):
    kwargs = dict(method="tucker", ratio=8, calibration=str(samples), progress=False)
    plain = optimize(DEMO, None, **kwargs)
    recovered = optimize(DEMO, tmp_path / "r.onnx", recover=45, **kwargs)
    info = recovered.recovery
    assert info is not None and info["steps"] == 45 and "range test" in info["lr_from"]
    assert info["before"] == pytest.approx(plain.verification.max_relative_error, rel=1e-6)
    assert info["after"] < 0.9 * info["before"]
    assert recovered.verification.max_relative_error == pytest.approx(info["after"])
    assert recovered.after.params == plain.after.params  # same factors' shapes, trained values
    assert [s["stage"] for s in recovered.stages] == ["input", "recovered"]


def test_the_bound_search_judges_each_candidate_once_recovered(samples):
    kwargs = dict(method="tucker", calibration=str(samples), max_output_error=0.2, progress=False)
    plain = optimize(DEMO, None, **kwargs)
    recovered = optimize(DEMO, None, recover=20, lr=1e-4, **kwargs)
    trials = recovered.budget_search
    assert trials and all("before_recovery" in t and t["recovery_seconds"] >= 0 for t in trials)
    assert any(t["max_relative_error"] < t["before_recovery"] for t in trials)
    assert recovered.verification.max_relative_error <= 0.2
    assert recovered.eligible_params[1] <= plain.eligible_params[1]  # at least as far, within the bound
    assert recovered.recovery["lr_from"] == "--lr"


def test_cli_reports_recovery(samples, tmp_path):
    code, out = invoke(
        "optimize",
        DEMO,
        "-o",
        tmp_path / "r.onnx",
        "--calibration",
        samples,
        "--ratio",
        "4",
        "--recover",
        "5",
        "--json",
    )
    assert code == 0, out
    report = json.loads(out[out.index("{") :])
    assert report["recovery"]["steps"] == 5 and "too few for a range test" in report["recovery"]["lr_from"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--ratio", "4", "--recover", "10"], "add --calibration"),
        (["--ratio", "4", "--recover-data", "x.npz"], "--recover-data sets up --recover"),
        (["--ratio", "4", "--lr", "0.001"], "--lr sets up --recover"),
        (["--ratio", "4", "--recover", "0"], "--recover"),
        (["--method", "none", "--int8", "--recover", "5", "--calibration", "CAL"], "--method none"),
        (["--ratio", "4", "--recover", "5", "--calibration", "CAL", "--recover-data", "nowhere.npz"], "nowhere.npz"),
        (["--ratio", "4", "--recover", "5", "--calibration", "CAL", "--torch-device", "cuda:7"], "cuda:7"),
        # the output may not be the extra data: it is an input like the others
        (["--ratio", "4", "--recover", "5", "--calibration", "CAL", "--recover-data", "OUT"], "is an input"),
    ],
)
def test_bad_recovery_options_are_one_line_before_any_work(samples, tmp_path, args, says):
    out = tmp_path / "x.onnx"
    if "OUT" in args:
        out = tmp_path / "more.npz"
        np.savez(out, x=np.zeros((4, 1, 28, 28), np.float32))
    before = out.read_bytes() if out.exists() else None
    args = [str(samples) if a == "CAL" else str(out) if a == "OUT" else a for a in args]
    assert_user_error(*invoke("optimize", DEMO, "-o", out, *args), says)
    assert (out.read_bytes() if out.exists() else None) == before  # nothing written, nothing overwritten
