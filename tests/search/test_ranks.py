"""search ranks end to end on the demo CNN: the front, its configs, replay, failures, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tensorfold.graph.io import load_model
from tensorfold.graph.model import count_params
from tensorfold.search.objectives import Evaluator
from tensorfold.search.ranks import search_ranks
from tests.helpers.cli import assert_user_error, invoke
from tests.helpers.data import needs_data
from tests.passes.single_node import conv_model


def test_front_is_verified_written_and_replayable(demo_model, tmp_path):
    out = tmp_path / "pareto"
    report = search_ranks(demo_model, objectives="params,error", n_trials=24, output_dir=out, progress=False)
    assert report["trials"] == {"total": 24, "this_run": 24, "complete": 24, "failed": 0, "infeasible": 0}
    front = report["front"]
    assert front and all(p["verified"] for p in front)
    params = [p["values"]["params"] for p in front]
    errors = [p["values"]["error"] for p in front]
    assert params == sorted(params) and errors == sorted(errors, reverse=True)  # a trade-off, both ways
    assert 0 < report["hypervolume"] <= 1
    assert (out / "front.png").stat().st_size > 5000 and json.loads((out / "front.json").read_text())["front"]
    # replay the most compressed point: same parameter count and the same output error
    point = front[0]
    code, text = invoke("optimize", demo_model, "-o", tmp_path / "replay.onnx", "--config", point["config"], "--json")
    assert code == 0, text
    replay = load_model(tmp_path / "replay.onnx")
    assert count_params(replay) == point["values"]["params"]
    assert json.loads(text)["verification"]["max_relative_error"] == pytest.approx(point["values"]["error"], rel=1e-4)
    assert count_params(load_model(point["model"])) == point["values"]["params"]
    # checked on random inputs only, a replay says so and names real samples (it said the error alone)
    assert any("real samples" in w or "says little about real inputs" in w for w in json.loads(text)["warnings"])


def test_cli_table_and_constraints(demo_model, tmp_path):
    code, text = invoke(
        "search",
        "ranks",
        demo_model,
        "--n-trials",
        "12",
        "--sampler",
        "random",
        "--max-error",
        "0.5",
        "-o",
        tmp_path / "p",
        "--no-models",
    )
    assert code == 0, text
    assert "Pareto front" in text and "infeasible" in text
    report = json.loads((tmp_path / "p" / "front.json").read_text())
    assert all(p["values"]["error"] <= 0.5 for p in report["front"])
    assert not list((tmp_path / "p").glob("*.onnx"))


def test_failed_trials_are_recorded_and_the_search_goes_on(demo_model, tmp_path, monkeypatch):
    real = Evaluator.error
    calls = {"n": 0}

    def flaky(self, model):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            return math.nan
        if calls["n"] % 5 == 0:
            raise RuntimeError("onnxruntime lost its way")
        return real(self, model)

    monkeypatch.setattr(Evaluator, "error", flaky)
    report = search_ranks(demo_model, n_trials=15, sampler="tpe", output_dir=None, progress=False)
    t = report["trials"]
    assert t["total"] == 15 and t["failed"] >= 4 and t["complete"] + t["failed"] == 15
    reasons = {f["reason"] for f in report["failures"]}
    assert any("non-finite measurement: error = nan" in r for r in reasons)
    assert any("onnxruntime lost its way" in r for r in reasons)


def test_a_signal_during_optunas_bookkeeping_ends_the_search_as_interrupted(demo_model, monkeypatch):
    """Ctrl-C while Optuna records a trial (its tell) waits for the record, then ends the search as
    an interrupted one. Before, Optuna's `finally` turned it into UnboundLocalError ('updated_state'):
    an internal error, seen as a flaky SIGTERM test."""
    import signal

    import optuna.study._optimize as optuna_optimize

    real, told = optuna_optimize._tell_with_warning, []

    def tell(*args, **kwargs):
        told.append(1)
        if len(told) == 2:
            signal.raise_signal(signal.SIGINT)  # inside Optuna, between trials
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna_optimize, "_tell_with_warning", tell)
    report = search_ranks(demo_model, n_trials=6, output_dir=None, progress=False)
    assert report["interrupted"] and report["trials"]["complete"] == 2  # the second trial's record is whole


@needs_data
def test_accuracy_objective_cross_validates_on_held_out_training_data(demo_model, tmp_path):
    report = search_ranks(
        demo_model,
        objectives="params,accuracy",
        n_trials=4,
        sampler="random",
        data="fashion-mnist",
        recover_steps=10,
        output_dir=None,
        progress=False,
    )
    assert 0.85 < report["baseline"]["accuracy"] <= 1
    assert all(0 < p["values"]["accuracy"] <= 1 for p in report["front"])


def test_accuracy_data_may_name_its_array_after_the_model_input(demo_model, tmp_path):
    """search ranks --data refused an .npz whose array bears the input's name ('input:0'), which
    recover and optimize read."""
    import numpy as np
    import onnx

    from tests.helpers.data import smooth_images

    name = onnx.load(str(demo_model)).graph.input[0].name
    data = tmp_path / "labelled.npz"
    np.savez(data, **{name: smooth_images(40, 0), "y": np.arange(40) % 10})
    report = search_ranks(
        demo_model,
        objectives="params,accuracy",
        n_trials=2,
        sampler="random",
        data=str(data),
        recover_steps=2,
        output_dir=None,
        progress=False,
    )
    assert 0 <= report["baseline"]["accuracy"] <= 1


def test_studies_in_sqlite_refuse_other_objectives_and_models(demo_model, tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    search_ranks(demo_model, n_trials=3, storage=db, study="s", output_dir=None, progress=False)
    again = search_ranks(demo_model, n_trials=2, storage=db, study="s", output_dir=None, progress=False)
    assert again["trials"]["total"] == 5 and again["trials"]["this_run"] == 2
    code, text = invoke(
        "search",
        "ranks",
        demo_model,
        "--objectives",
        "params,flops",
        "--storage",
        db,
        "--study",
        "s",
        "--n-trials",
        "1",
        "-o",
        tmp_path / "x",
    )
    assert_user_error(code, text, "was created with objectives params,error")
    other, _ = conv_model(np.random.default_rng(0).standard_normal((16, 8, 3, 3)), bias=True)
    import onnx

    onnx.save(other, tmp_path / "other.onnx")
    code, text = invoke(
        "search",
        "ranks",
        tmp_path / "other.onnx",
        "--storage",
        db,
        "--study",
        "s",
        "--shape",
        "x:1,8,9,9",
        "--n-trials",
        "1",
        "-o",
        tmp_path / "x",
    )
    assert_user_error(code, text, "was created for another model")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--objectives", "params,speed"], "unknown objective(s) speed"),
        (["--objectives", "params,params"], "named twice"),
        (["--methods", "svd,magic"], "unknown method(s) magic"),
        (
            ["--storage", "postgresql://nobody@127.0.0.1:1/none"],
            "cannot reach --storage postgresql://nobody@127.0.0.1:1",
        ),
        (["--storage", "mysql+nodriver://u:secret@h/db"], "--storage mysql+nodriver://u:***@h/db"),
        (["--storage", "journal:/no/such/dir/j.log"], "does not exist"),
        (["--storage", "search.db"], "is not a storage URL"),
        (["--n-trials", "0"], "--n-trials"),
        (["--objectives", "accuracy"], "needs --data"),
        (["--population", "1", "--sampler", "nsga2"], "--population must be >= 2"),
        (["--population", "8", "--sampler", "tpe"], "the tpe sampler has none"),
        (["--data", "fashion-mnist"], "--data serves the accuracy objective"),
        (["--recover-steps", "7"], "--recover-steps serves the accuracy objective"),
    ],
)
def test_bad_input_is_one_line_exit_2(demo_model, tmp_path, args, message):
    code, text = invoke("search", "ranks", demo_model, "-o", tmp_path / "p", *args)
    assert_user_error(code, text, message)


def test_config_from_another_model_or_with_rank_options_is_refused(demo_model, tmp_path):
    report = search_ranks(
        demo_model, n_trials=4, sampler="random", output_dir=tmp_path / "p", save_models=False, progress=False
    )
    config = report["front"][0]["config"]
    other, _ = conv_model(np.random.default_rng(0).standard_normal((16, 8, 3, 3)), bias=True)
    import onnx

    onnx.save(other, tmp_path / "other.onnx")
    code, text = invoke(
        "optimize", tmp_path / "other.onnx", "-o", tmp_path / "o.onnx", "--config", config, "--shape", "x:1,8,9,9"
    )
    assert_user_error(code, text, "was made for another model")
    code, text = invoke("optimize", demo_model, "-o", tmp_path / "o.onnx", "--config", config, "--ratio", "4")
    assert_user_error(code, text, "drop --ratio")
    (tmp_path / "bad.yaml").write_text(
        "kind: tensorfold-ranks\nlayers: {'/classifier/Gemm': {method: svd, ranks: [-1]}}\n"
    )
    code, text = invoke("optimize", demo_model, "-o", tmp_path / "o.onnx", "--config", tmp_path / "bad.yaml")
    assert_user_error(code, text, "needs 'keep'")
    assert not (tmp_path / "o.onnx").exists()
    # a rank above what the layer holds is built at the most it holds, and said (was: silently)
    (tmp_path / "big.yaml").write_text(
        "kind: tensorfold-ranks\nlayers: {'/classifier/Gemm': {method: svd, ranks: [9999]}}\n"
    )
    code, text = invoke("optimize", demo_model, "-o", tmp_path / "o.onnx", "--config", tmp_path / "big.yaml", "--force")
    assert code == 0 and "the plan's svd ranks [9999] are above what the layer holds; built at [10]" in text


def test_gp_sampler_and_the_global_space_from_the_cli(demo_model, tmp_path):
    code, text = invoke(
        "search",
        "ranks",
        demo_model,
        "--objectives",
        "error",
        "--sampler",
        "gp",
        "--space",
        "global",
        "--n-trials",
        "6",
        "-o",
        tmp_path / "g",
        "--no-models",
        "--json",
    )
    assert code == 0, text
    report = json.loads(text)
    assert report["space"]["mode"] == "global" and report["trials"]["complete"] == 6
    assert len(report["front"]) == 1 and report["front"][0]["verified"]


def test_memory_is_an_objective_and_a_constraint(tmp_path):
    """--objectives memory and --max-memory-mb: the predicted peak memory of one call; the front's
    feasible points stay within the bound."""
    from tensorfold.api import search_ranks
    from tensorfold.demo import demo_model_path

    report = search_ranks(
        demo_model_path(),
        objectives="memory,error",
        n_trials=6,
        max_memory_mb=0.6,
        output_dir=tmp_path / "p",
        save_models=False,
        progress=False,
    )
    assert report.baseline["memory"] > 0.6  # the input needs more than the bound
    assert report.front, report.failures
    feasible = [p for p in report.front if p["values"]["memory"] <= 0.6]
    assert feasible and all(p["values"]["memory"] < report.baseline["memory"] for p in feasible)


def test_constraints_no_trial_meets_are_said(demo_model, tmp_path):
    code, text = invoke(
        "search", "ranks", demo_model, "--objectives", "params", "--max-memory-mb", "0.0001", "--n-trials", "2",
        "-o", tmp_path / "p",
    )  # fmt: skip
    assert code == 0 and "none of the 2 complete trials met the constraints (--max-memory-mb 0.0001)" in text


def test_progress_off_a_terminal_is_tensorfolds_line_not_optunas_bar(demo_model, monkeypatch):
    import io

    from tensorfold import progress

    class Log(io.StringIO):
        def isatty(self):
            return False

    log = Log()
    monkeypatch.setattr("sys.stderr", log)  # in the body: pytest's capture resets it after fixtures
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    progress.start_clock()
    search_ranks(demo_model, objectives="params,error", n_trials=3, output_dir=None, progress=True)
    lines = [line for line in log.getvalue().splitlines() if line.startswith("progress:")]
    assert any("search ranks" in line and "/3" in line for line in lines), log.getvalue()[-500:]
    assert "\r" not in log.getvalue()
