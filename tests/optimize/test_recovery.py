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
    assert info is not None and info["steps"] == 45 and "whole runs" in info["lr_from"]
    assert info["before"] == pytest.approx(plain.verification.max_relative_error, rel=1e-6)
    assert info["after"] < 0.9 * info["before"]
    assert recovered.verification.max_relative_error == pytest.approx(info["after"])
    assert recovered.after.params == plain.after.params  # same factors' shapes, trained values
    assert [s["stage"] for s in recovered.stages] == ["input", "recovered"]
    from rich.console import Console

    console = Console(record=True, width=200)
    recovered.render(console)
    assert "recovery: 45 steps at lr" in console.export_text()  # one candidate: not "per candidate"


def test_a_recovery_that_never_improved_says_the_weights_were_kept(samples):
    """magika: 'held-out error 0.2649 -> 0.2649' under a stage called recovered, and no word why."""
    from rich.console import Console

    report = optimize(DEMO, None, method="tucker", ratio=8, calibration=str(samples), progress=False, recover=3, lr=1e4)
    assert report.recovery["kept_start"] and report.recovery["after"] == pytest.approx(report.recovery["before"])
    console = Console(record=True, width=300)
    report.render(console)
    text = " ".join(console.export_text().split())  # the recovery line wraps at the console's width
    assert "no step improved on validation, so the factorized weights are written as they were" in text


def test_the_bound_search_judges_each_candidate_once_recovered(samples):
    kwargs = dict(method="tucker", calibration=str(samples), max_output_error=0.2, progress=False)
    plain = optimize(DEMO, None, **kwargs)
    recovered = optimize(DEMO, None, recover=20, lr=1e-4, recompute_segments=3, **kwargs)
    trials = recovered.budget_search
    # the unrefined search first (seconds), then recovery only above its answer (minutes each)
    unrefined = [t for t in trials if "before_recovery" not in t]
    assert unrefined == plain.budget_search
    reached = max(t["ratio"] for t in unrefined if t["within"])
    trials = [t for t in trials if "before_recovery" in t]
    assert trials and all(t["recovery_seconds"] >= 0 and t["ratio"] > reached for t in trials)
    assert any(t["max_relative_error"] < t["before_recovery"] for t in trials)
    assert recovered.verification.max_relative_error <= 0.2
    assert recovered.eligible_params[1] <= plain.eligible_params[1]  # at least as far, within the bound
    assert recovered.recovery["lr_from"] == "--lr"
    beat = any(t["within"] for t in trials)  # a recovered candidate past the unrecovered answer
    assert [s["stage"] for s in recovered.stages] == ["input", "recovered" if beat else "factorized"]
    assert recovered.recovery["recompute_segments"] == 3  # activation checkpointing reached the trainer
    from rich.console import Console

    console = Console(record=True, width=160)
    recovered.render(console)
    text = console.export_text()
    assert "before recovery" in text and f"{trials[0]['before_recovery']:.4f}" in text


def test_where_no_recovered_candidate_meets_the_bound_the_report_says_the_answer_is_unrecovered(samples, monkeypatch):
    from rich.console import Console

    from tensorfold.optimize.recovery import Recovered, Recoverer

    # a recovery that changes nothing: no candidate above the unrecovered answer comes within
    monkeypatch.setattr(Recoverer, "__call__", lambda self, student, label="": Recovered(student, 0, 0.0, "test"))
    kwargs = dict(method="tucker", calibration=str(samples), max_output_error=0.2, progress=False)
    plain = optimize(DEMO, None, **kwargs)
    report = optimize(DEMO, None, recover=20, lr=1e-4, **kwargs)
    assert report.eligible_params == plain.eligible_params
    assert [s["stage"] for s in report.stages] == ["input", "factorized"]
    console = Console(record=True, width=300)
    report.render(console)
    assert "no recovered candidate met the bound, so the unrecovered answer is written" in console.export_text()


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
    assert report["recovery"]["steps"] == 5 and "whole runs" in report["recovery"]["lr_from"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--ratio", "4", "--recover", "10"], "add --calibration"),
        (["--ratio", "4", "--recover-data", "x.npz"], "--recover-data sets up --recover"),
        (["--ratio", "4", "--lr", "0.001"], "--lr sets up --recover"),
        (["--ratio", "4", "--batch-size", "4"], "--batch-size sets up --recover"),
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


def _interrupt_after(monkeypatch, candidates: int):
    """Recoverer._train raises KeyboardInterrupt (Ctrl-C) once `candidates` candidates trained."""
    from tensorfold.optimize.recovery import Recoverer

    real, calls = Recoverer._train, []

    def train(self, student, folder, resume, label, key=""):
        if len(calls) == candidates:
            raise KeyboardInterrupt("stopped by the test")
        calls.append(folder)
        return real(self, student, folder, resume, label, key)

    monkeypatch.setattr(Recoverer, "_train", train)
    return calls


def test_an_interrupted_search_keeps_its_candidates_and_resumes(samples, tmp_path, monkeypatch):
    kwargs = dict(method="tucker", calibration=str(samples), max_output_error=0.2, recover=8, lr=1e-4, progress=False)
    whole = optimize(DEMO, tmp_path / "whole.onnx", **kwargs)
    assert not (tmp_path / "whole.onnx.ckpt").exists()  # a finished search leaves no checkpoints
    assert "resumed_candidates" not in whole.recovery  # a fresh run resumed nothing
    out = tmp_path / "small.onnx"
    calls = _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        optimize(DEMO, out, **kwargs)
    folder = tmp_path / "small.onnx.ckpt"
    assert not out.exists() and len(list(folder.glob("cand-*.onnx"))) == 2 and (folder / "search.json").is_file()
    with pytest.raises(Exception, match="add --resume"):  # not overwritten without --resume
        optimize(DEMO, out, **kwargs)
    monkeypatch.undo()
    calls = _interrupt_after(monkeypatch, 99)
    resumed = optimize(DEMO, out, resume=True, **kwargs)
    recovered = [t for t in whole.budget_search if "before_recovery" in t]
    assert len(recovered) > 2 and len(calls) == len(recovered) - 2  # the first two came from the checkpoints
    assert [t["ratio"] for t in resumed.budget_search] == [t["ratio"] for t in whole.budget_search]
    assert resumed.after.params == whole.after.params
    assert resumed.verification.max_relative_error == pytest.approx(whole.verification.max_relative_error)
    assert out.is_file() and not folder.exists() and resumed.recovery["resumed_candidates"] == 2


def _sigint_at_evaluation(monkeypatch, n: int) -> None:
    """Ctrl-C arrives during the n-th validation of the recovery runs (counted across runs)."""
    import os
    import signal

    import tensorfold.recovery.finetune as finetune

    real, seen = finetune.evaluate, []

    def evaluate(*args, **kw):
        seen.append(1)
        if len(seen) == n:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kw)

    monkeypatch.setattr(finetune, "evaluate", evaluate)


def _record_resumes(monkeypatch) -> list:
    """The (step, history) of every training checkpoint a run resumes from, in order."""
    import tensorfold.recovery.finetune as finetune

    starts: list = []
    real = finetune.resume_checkpoint
    monkeypatch.setattr(finetune, "resume_checkpoint", lambda *a: starts.append(step := real(*a)) or step)
    return starts


def test_a_candidate_interrupted_mid_training_continues_from_its_checkpoint(samples, tmp_path, monkeypatch):
    kwargs = dict(method="tucker", ratio=8, calibration=str(samples), recover=24, lr=1e-4, progress=False)
    out = tmp_path / "r.onnx"
    _sigint_at_evaluation(monkeypatch, 2)  # the first evaluation is the start's
    with pytest.raises(
        KeyboardInterrupt, match="r.onnx.ckpt keeps the recovered candidates: the same command with --resume"
    ):
        optimize(DEMO, out, **kwargs)
    assert list((tmp_path / "r.onnx.ckpt").glob("cand-*/last.pt"))
    monkeypatch.undo()
    starts = _record_resumes(monkeypatch)
    report = optimize(DEMO, out, resume=True, **kwargs)
    assert starts and 0 < starts[0][0] < 24 and report.recovery["steps"] == 24
    assert report.recovery["lr_from"] == "--lr" and out.is_file()


def test_the_first_candidates_runs_by_rate_resume(samples, tmp_path, monkeypatch):
    """Without --lr the first candidate trains once per rate: a search stopped in its second run
    replays the finished one from its checkpoints and continues the stopped one from its last
    evaluation."""
    kwargs = dict(method="tucker", ratio=8, calibration=str(samples), recover=24, progress=False)
    out = tmp_path / "r.onnx"
    _sigint_at_evaluation(monkeypatch, 7)  # 5 evaluations a run (the start's, then every 6 steps): in the second
    with pytest.raises(KeyboardInterrupt):
        optimize(DEMO, out, **kwargs)
    runs = sorted(p.parent.name for p in (tmp_path / "r.onnx.ckpt").glob("cand-*-lr*/last.pt"))
    assert [name.rsplit("-lr", 1)[1] for name in runs] == ["0.0001", "0.001"]
    monkeypatch.undo()
    starts = _record_resumes(monkeypatch)
    report = optimize(DEMO, out, resume=True, **kwargs)
    assert starts[0][0] == 24 and 0 < starts[1][0] < 24  # the finished run replayed, the stopped one continued
    assert report.recovery["steps"] == 24 and "whole runs" in report.recovery["lr_from"]
    assert out.is_file() and not (tmp_path / "r.onnx.ckpt").exists()


def test_resume_with_other_settings_is_refused(samples, tmp_path, monkeypatch):
    kwargs = dict(method="tucker", calibration=str(samples), max_output_error=0.2, lr=1e-4, progress=False)
    _interrupt_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        optimize(DEMO, tmp_path / "s.onnx", recover=8, **kwargs)
    code, out = invoke(
        "optimize", DEMO, "-o", tmp_path / "s.onnx", "--calibration", samples, "--max-output-error", "0.2",
        "--recover", "9", "--lr", "1e-4", "--resume",
    )  # fmt: skip
    assert_user_error(code, out, "steps 8, this one has 9")
    code, out = invoke(
        "optimize", DEMO, "-o", tmp_path / "s.onnx", "--calibration", samples, "--max-output-error", "0.2",
        "--recover", "8", "--lr", "1e-4", "--train", "all", "--resume",
    )  # fmt: skip
    assert_user_error(code, out, "train 'chains', this one has 'all'")


@pytest.mark.parametrize(
    "args, says",
    [
        (["--ratio", "4", "--resume"], "--resume sets up --recover"),
        (["--ratio", "4", "--checkpoints", "ck"], "--checkpoints sets up --recover"),
        (["--ratio", "4", "--no-warm-start"], "--no-warm-start sets up --recover"),
        (["--ratio", "4", "--recover", "5", "--calibration", "CAL", "--resume"], "no search checkpoints"),
    ],
)
def test_bad_resume_options_are_one_line(samples, tmp_path, args, says):
    args = [str(samples) if a == "CAL" else a for a in args]
    assert_user_error(*invoke("optimize", DEMO, "-o", tmp_path / "x.onnx", *args), says)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.onnx.ckpt").exists()


def test_warm_starts_are_offered_once_a_recovered_candidate_is_within_the_bound(samples):
    kwargs = dict(method="tucker", calibration=str(samples), max_output_error=0.2, progress=False)
    report = optimize(DEMO, None, recover=8, lr=1e-4, warm_start=True, **kwargs)
    refined = [t for t in report.budget_search if "before_recovery" in t]
    assert refined and all(t["start"] in ("warm", "cold") for t in refined)
    first_ok = next((i for i, t in enumerate(refined) if t["within"]), len(refined))
    assert all(t["start"] == "cold" for t in refined[: first_ok + 1])  # nothing to start from before
    assert report.verification.max_relative_error <= 0.2
    assert "by candidate" in report.recovery["trained"]  # each candidate's ranks, not the first's alone


def test_under_torchrun_every_process_trains_and_rank_0_alone_searches_and_writes(samples, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "small.onnx"
    done = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "tensorfold", "optimize", str(DEMO), "-o", str(out), "--method", "tucker",
            "--calibration", str(samples), "--max-output-error", "0.2", "--recover", "6", "--lr", "1e-4", "--json",
        ],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # one report: rank 0's
    assert "2 processes train each candidate" in done.stderr
    assert any("before_recovery" in t for t in report["budget_search"])
    assert report["verification"]["max_relative_error"] <= 0.2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx"]  # no checkpoints left, nothing else


def test_torchrun_without_recover_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Exception, match="under torchrun, optimize trains its candidates with --recover"):
        optimize(DEMO, tmp_path / "x.onnx", method="tucker", ratio=2, progress=False)


def test_candidates_too_far_over_the_bound_are_not_recovered(samples):
    from tensorfold.calibration.budget_search import HOPELESS

    bound = 0.1
    kwargs = dict(method="tucker", calibration=str(samples), max_output_error=bound, progress=False)
    report = optimize(DEMO, None, recover=4, lr=1e-4, **kwargs)
    unrefined = [t for t in report.budget_search if "before_recovery" not in t]
    hopeless = [t["ratio"] for t in unrefined if t["max_relative_error"] > HOPELESS * bound]
    refined = [t for t in report.budget_search if "before_recovery" in t]
    assert hopeless and refined and all(t["ratio"] < min(hopeless) for t in refined)


def test_int8_comes_last_inside_the_same_bound(samples, tmp_path):
    out = tmp_path / "fast.onnx"
    kwargs = dict(method="tucker", calibration=str(samples), max_output_error=0.2, progress=False)
    report = optimize(DEMO, out, recover=4, lr=1e-4, int8=True, **kwargs)
    names = [c["name"] for c in report.deploy["candidates"]]
    assert any("int8" in n for n in names) and any("factorized" in n for n in names)
    # the input is written back where no candidate is faster beyond the timing noise (a 0.1 ms model):
    # then there is nothing to verify; otherwise the written model is within the bound
    assert (report.deploy["chosen"] == "input" or report.verification.max_error <= 0.2) and out.is_file()
    assert report.recovery is not None and any("before_recovery" in t for t in report.budget_search)
    from rich.console import Console

    console = Console(record=True, width=200)
    report.render(console)
    # the candidates table says what was written: no claim from the stages, which deploy replaces
    text = console.export_text()
    assert "unrecovered answer is written" not in text
    # ... and which factorizations were recovered: the bound search's answer is, where a recovered
    # candidate met the bound
    factorized = next(c for c in report.deploy["candidates"] if c["name"] == "factorized")
    met = any(t["within"] and "before_recovery" in t for t in report.budget_search)
    assert factorized["recovered"] == met and ("factorized (recovered)" in text) == met
    assert not any(c["recovered"] for c in report.deploy["candidates"] if c["name"] in ("input", "int8"))


def test_a_recovery_worse_on_the_held_out_share_is_not_kept_and_the_report_says_so(samples, monkeypatch):
    """The search keeps the candidate as it was, and its trial records what recovery had reached."""
    import onnx
    from rich.console import Console

    from tensorfold.optimize.recovery import Recovered, Recoverer

    def worse(self, student, label="recover"):
        model = onnx.ModelProto()
        model.CopyFrom(student)
        for tensor in model.graph.initializer:  # every weight doubled: a recovery that made things worse
            if tensor.data_type == onnx.TensorProto.FLOAT:
                array = onnx.numpy_helper.to_array(tensor) * 2.0
                tensor.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), tensor.name))
        return Recovered(model, 8, 0.0, "done")

    monkeypatch.setattr(Recoverer, "__call__", worse)
    report = optimize(
        DEMO, None, method="tucker", calibration=str(samples), max_output_error=0.2, recover=8, lr=1e-4, progress=False
    )
    refined = [t for t in report.budget_search if "before_recovery" in t]
    assert refined and all(t["max_relative_error"] == t["before_recovery"] for t in refined)
    assert all(t["recovered_not_kept"] > t["before_recovery"] for t in refined)
    console = Console(record=True, width=200)
    report.render(console)
    assert f"(recovered {refined[0]['recovered_not_kept']:.4f}: not kept)" in console.export_text()


def test_a_model_the_trainer_cannot_run_is_one_line_naming_the_node(samples, tmp_path, monkeypatch):
    """A node torch fails on (here every Relu, as a op the trainer lacks a kernel for would):
    `optimize --recover` says which node, before any factorization; exit 2, nothing written."""
    from tensorfold.recovery.torch_ops import OPS

    def fails(node, *args):
        raise RuntimeError("no kernel for this")

    monkeypatch.setitem(OPS, "Relu", fails)
    out = tmp_path / "x.onnx"
    code, text = invoke("optimize", DEMO, "-o", out, "--ratio", "4", "--recover", "5", "--calibration", samples)
    assert_user_error(code, text, "--recover: the model cannot be trained here: Relu node '")
    assert "no kernel for this" in text and not out.exists()


def test_a_candidate_whose_chains_save_more_than_the_input_recomputes_them(tmp_path):
    """Tensor-Train chains of a transformer block's matrices keep intermediates larger than the
    layer's input; the batch was chosen by the input model's bytes, so those chains recompute."""
    import onnx
    from rich.console import Console

    from tensorfold.calibration.data import Samples
    from tensorfold.optimize.recovery import Recoverer
    from tests.fixtures.torch_models import export_transformer_block

    block = export_transformer_block(tmp_path)
    optimize(block, tmp_path / "tt.onnx", method="tt", ratio=2, progress=False)
    x = np.random.default_rng(0).standard_normal((32, 16, 64)).astype(np.float32)
    recoverer = Recoverer(onnx.load(str(block)), Samples({"input": x}, "noise"), 2, lr=1e-4, progress=False)
    recovered = recoverer(onnx.load(str(tmp_path / "tt.onnx")))
    assert 1 <= recovered.recomputed < 6 and recovered.as_dict()["recomputed_chains"] == recovered.recomputed
    assert recoverer.describe["recomputed_candidates"] == 1
    report = optimize(DEMO, None, method="tucker", ratio=8, progress=False)
    report.recovery = recoverer.describe
    console = Console(record=True, width=400)
    report.render(console)
    assert "1 candidate(s) recomputed their largest factor chains" in console.export_text()
