"""recover on small data: loss goes down, reports and checkpoints, and every bad input."""

import json
import pickle

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from tensorfold.api import optimize
from tensorfold.cli import main
from tensorfold.datasets import load_data, prepare_inputs
from tensorfold.demo import demo_model_path
from tensorfold.errors import TensorfoldError
from tensorfold.recovery.config import RecoverConfig
from tensorfold.recovery.run import recover
from tests.helpers.cli import assert_user_error, invoke

TEACHER = demo_model_path()


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """Images the teacher labels itself: blobs, so the student has something consistent to learn."""
    rng = np.random.default_rng(0)
    x = (rng.random((600, 28, 28)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("d") / "data.npz"
    np.savez(path, x=x, y=rng.integers(0, 10, 600))
    unlabelled = path.with_name("unlabelled.npz")
    np.savez(unlabelled, x=x)
    return path, unlabelled


def test_training_lowers_the_distillation_loss(student, npz, tmp_path):
    cfg = RecoverConfig(max_steps=12, batch_size=32, lr=3e-3, distill="both", threads=1)
    report = recover(student, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(npz[1]), cfg=cfg, progress=False)
    history = json.loads((tmp_path / "r.onnx.ckpt" / "history.json").read_text())
    first, last = np.mean(history["loss"][:3]), np.mean(history["loss"][-3:])
    assert last < first
    assert report["features_matched"] >= 2
    assert report["val_after"]["teacher_agreement"] >= report["val_before"]["teacher_agreement"]
    out = onnx.load(tmp_path / "r.onnx")
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in onnx.load(student).graph.node]
    assert (tmp_path / "r.onnx.ckpt" / "last.pt").exists()


def test_resume_continues(student, npz, tmp_path):
    cfg = RecoverConfig(max_steps=4, batch_size=32, threads=1, eval_every=2)
    recover(student, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, progress=False)
    cfg = RecoverConfig(max_steps=8, batch_size=32, threads=1, eval_every=2)
    report = recover(
        student, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, resume=True, progress=False
    )
    assert report["steps"] == 8


class _Planted:
    """A pickle that would create a file when unpickled (what a planted checkpoint could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_planted_checkpoint_runs_no_code(student, npz, tmp_path):
    ckpt = tmp_path / "r.onnx.ckpt"
    ckpt.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"params": _Planted(marker)}, ckpt / "last.pt")
    # a planter can write the folder's manifest too: the load itself must run no code
    (ckpt / ".tensorfold.json").write_text('{"written_by": "tensorfold", "files": ["last.pt"]}')
    cfg = RecoverConfig(max_steps=2, batch_size=32, threads=1)
    with pytest.raises(TensorfoldError, match="not a tensorfold checkpoint"):
        recover(
            student, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, resume=True, progress=False
        )
    assert not marker.exists() and not (tmp_path / "r.onnx").exists()


def test_nan_loss_stops_and_says_so(student, npz, tmp_path):
    cfg = RecoverConfig(
        max_steps=6, batch_size=32, lr=1e30, clip=0, threads=1, eval_every=1, distill="hinton", warmup=0.0
    )
    with pytest.raises(TensorfoldError, match="loss became") as err:
        recover(student, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, progress=False)
    assert "nothing written" in str(err.value) and not (tmp_path / "r.onnx").exists()
    # the message names what is really on disk: the checkpoint and the step it holds, or none
    ckpt = tmp_path / "r.onnx.ckpt" / "last.pt"
    if ckpt.exists():
        step = torch.load(ckpt, weights_only=True)["step"]
        assert f"({ckpt}, step {step}) is kept" in str(err.value)
    else:
        assert "no checkpoint was written" in str(err.value)
        assert not (tmp_path / "r.onnx.ckpt").exists()


def test_a_checkpoint_of_another_model_is_refused_by_name(student, npz, tmp_path):
    other = tmp_path / "other.onnx"
    optimize(TEACHER, other, method="tucker", ratio=3, progress=False)
    cfg = RecoverConfig(max_steps=2, batch_size=32, threads=1, eval_every=1)
    recover(other, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, progress=False)
    (tmp_path / "r.onnx").unlink()
    with pytest.raises(TensorfoldError, match="written for another model"):
        recover(
            student, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, resume=True, progress=False
        )
    assert not (tmp_path / "r.onnx").exists()
    # without --resume the stale checkpoints are replaced, not loaded
    report = recover(student, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, progress=False)
    assert report["steps"] == 2


def test_a_torn_checkpoint_is_one_line(student, npz, tmp_path):
    (tmp_path / "r.onnx.ckpt").mkdir()
    (tmp_path / "r.onnx.ckpt" / "last.pt").write_bytes(b"PK\x03\x04 torn")
    cfg = RecoverConfig(max_steps=2, batch_size=32, threads=1)
    # a last.pt tensorfold did not write there is refused before any work, --resume or not
    for resume in (True, False):
        with pytest.raises(TensorfoldError, match="last.pt, which tensorfold did not write there"):
            recover(
                student,
                tmp_path / "r.onnx",
                teacher_path=TEACHER,
                data=str(npz[0]),
                resume=resume,
                cfg=cfg,
                progress=False,
            )
    # one it did write, torn by a crash: one line too
    (tmp_path / "r.onnx.ckpt" / ".tensorfold.json").write_text('{"written_by": "tensorfold", "files": ["last.pt"]}')
    with pytest.raises(TensorfoldError, match="not a tensorfold checkpoint"):
        recover(
            student, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(npz[0]), resume=True, cfg=cfg, progress=False
        )
    assert (tmp_path / "r.onnx.ckpt" / "last.pt").read_bytes() == b"PK\x03\x04 torn"


def test_outputs_are_checked_before_any_training(student, npz, tmp_path):
    (tmp_path / "folder.onnx").mkdir()
    for out, match in (
        (tmp_path / "folder.onnx", "is a folder"),
        (npz[0], "is an input"),
        (TEACHER, "is an input"),
        (tmp_path / "missing" / "r.onnx", "does not exist"),
    ):
        with pytest.raises(TensorfoldError, match=match):
            recover(
                student, out, teacher_path=TEACHER, data=str(npz[0]), cfg=RecoverConfig(max_steps=10**6), progress=False
            )


def test_teacher_with_other_outputs_is_refused(student, tmp_path, npz):
    other = onnx.load(TEACHER)
    other.graph.output[0].name = "other"
    other.graph.node[-1].output[0] = "other"
    onnx.save(other, tmp_path / "t.onnx")
    with pytest.raises(TensorfoldError, match="differ"):
        recover(student, tmp_path / "r.onnx", teacher_path=tmp_path / "t.onnx", data=str(npz[0]), progress=False)


def test_a_planted_cifar_batch_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(tmp_path / name, "wb") as fh:
            pickle.dump({b"data": _Planted(marker), b"labels": [1]}, fh)
    with pytest.raises(TensorfoldError, match="refusing .*only numpy arrays"):
        load_data(str(tmp_path), "train")
    assert not marker.exists()


def test_data_that_does_not_fit(student, tmp_path):
    np.savez(tmp_path / "rgb.npz", x=np.zeros((20, 5), np.float32))
    with pytest.raises(TensorfoldError, match="the model takes"):
        recover(student, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(tmp_path / "rgb.npz"), progress=False)


def test_loaders_on_real_formats(tmp_path):
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(tmp_path / name, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [1, 2, 3, 4]}, fh)
    x, y, desc = load_data(str(tmp_path), "train")
    assert x.shape == (20, 32, 32, 3) and y.shape == (20,) and "CIFAR-10" in desc
    small = prepare_inputs(x, [1, 1, 28, 28])
    assert small.shape == (20, 1, 28, 28) and 0 <= small.min() and small.max() <= 1
    norm = prepare_inputs(x, [1, 3, 32, 32], ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]))
    assert norm.shape == (20, 3, 32, 32) and norm.min() < 0
    (tmp_path / "junk").mkdir()
    with pytest.raises(TensorfoldError, match="no Fashion-MNIST"):
        load_data(str(tmp_path / "junk"))
    with pytest.raises(TensorfoldError, match="no such file"):
        load_data(str(tmp_path / "missing.npz"))


def test_cli_recover_json_and_errors(student, npz, tmp_path):
    runner = CliRunner()
    out = tmp_path / "r.onnx"
    result = runner.invoke(
        main,
        [
            "recover",
            str(student),
            "--teacher",
            str(TEACHER),
            "--data",
            str(npz[0]),
            "-o",
            str(out),
            "--max-steps",
            "3",
            "--batch-size",
            "32",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["steps"] == 3
    for args, expected in (
        (["--data", str(tmp_path / "nope.npz")], "no such file"),
        (["--data", str(npz[0]), "--alpha", "2"], "--alpha"),
        (["--data", str(npz[0]), "--normalize", "x"], "--normalize"),
    ):
        result = runner.invoke(main, ["recover", str(student), "--teacher", str(TEACHER), "-o", str(out), *args])
        assert result.exit_code == 2 and result.output.startswith("error:") and expected in result.output


def test_compress_torch_module_in_one_call(tmp_path, capsys):
    """No data named, no training (never a default data set); data that must be converted to fit
    the model's input trains with a warning saying how it was converted."""
    from tensorfold.api import compress
    from tests.fixtures.torch_models import build_resnet_like

    module, example = build_resnet_like()
    report, rec = compress(module, example, tmp_path / "r.onnx", method="tucker", ratio=2, progress=False)
    assert report.layers and rec is None and (tmp_path / "r.onnx").exists()
    np.savez(tmp_path / "rgb.npz", x=np.random.default_rng(0).random((64, 3, 32, 32)).astype(np.float32))
    report, rec = compress(
        module,
        example,
        tmp_path / "r2.onnx",
        method="tucker",
        ratio=2,
        data=str(tmp_path / "rgb.npz"),
        progress=False,
        recover_config=RecoverConfig(max_steps=2, batch_size=16, threads=1),
    )
    assert rec.steps == 2 and (tmp_path / "r2.onnx").exists()
    assert "do not fit" not in capsys.readouterr().err
    np.savez(tmp_path / "gray.npz", x=np.random.default_rng(0).random((64, 1, 16, 16)).astype(np.float32))
    compress(
        module,
        example,
        tmp_path / "r3.onnx",
        method="tucker",
        ratio=2,
        data=str(tmp_path / "gray.npz"),
        progress=False,
        recover_config=RecoverConfig(max_steps=1, batch_size=16, threads=1),
    )
    err = capsys.readouterr().err
    assert "repeated from 1 channel(s) to 3" in err and "resized from 16x16 to 32x32" in err


def test_image_folder_labelled_and_unlabelled(tmp_path, student):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "lab" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(tmp_path / "lab" / cls / f"{i}.png")
    (tmp_path / "unl").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / "unl" / f"{i}.jpg")
    x, y, desc = load_data(str(tmp_path / "lab"), size=(28, 28), channels=1)
    assert x.shape == (6, 28, 28, 1) and list(y) == [0, 0, 0, 1, 1, 1] and "2 classes" in desc
    x, y, desc = load_data(str(tmp_path / "unl"))
    assert x.shape == (4, 20, 20, 3) and y is None and "unlabelled" in desc
    assert prepare_inputs(x, [1, 1, 28, 28]).shape == (4, 1, 28, 28)
    report = recover(
        student,
        tmp_path / "r.onnx",
        teacher_path=TEACHER,
        data=str(tmp_path / "lab"),
        cfg=RecoverConfig(max_steps=2, batch_size=2, threads=1),
        progress=False,
    )
    assert report["steps"] == 2


def test_multi_teacher_torch_teacher_and_born_again(student, npz, tmp_path):
    from tensorfold.recovery.onnx_torch import OnnxModule

    cfg = RecoverConfig(max_steps=3, batch_size=32, threads=1)
    report = recover(
        student,
        tmp_path / "m.onnx",
        teacher_path=[TEACHER, TEACHER],
        teacher_weights=[0.7, 0.3],
        data=str(npz[1]),
        cfg=cfg,
        progress=False,
    )
    assert report["steps"] == 3 and report["features_matched"] >= 2 and len(report["teacher"]) == 2
    report = recover(
        student,
        tmp_path / "t.onnx",
        teacher_module=OnnxModule(onnx.load(TEACHER)),
        data=str(npz[1]),
        cfg=cfg,
        progress=False,
    )
    assert report["steps"] == 3
    report = recover(
        student, tmp_path / "b.onnx", teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, generations=2, progress=False
    )
    assert len(report["generations"]) == 2 and (tmp_path / "b.onnx.ckpt" / "gen2" / "last.pt").exists()
    with pytest.raises(TensorfoldError, match="weights"):
        recover(
            student,
            tmp_path / "x.onnx",
            teacher_path=[TEACHER],
            teacher_weights=[1, 2],
            data=str(npz[0]),
            cfg=cfg,
            progress=False,
        )


def test_deep_mutual_learning_with_a_peer(student, npz, tmp_path):
    peer = tmp_path / "peer.onnx"
    optimize(TEACHER, peer, method="cp", ratio=8, progress=False)
    runner = CliRunner()
    out = tmp_path / "r.onnx"
    result = runner.invoke(
        main,
        [
            "recover",
            str(student),
            "--teacher",
            str(TEACHER),
            "--peer",
            str(peer),
            "--data",
            str(npz[0]),
            "-o",
            str(out),
            "--max-steps",
            "3",
            "--batch-size",
            "32",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["steps"] == 3 and report["peers"][0]["output"].endswith("r.peer1.onnx")
    assert (tmp_path / "r.peer1.onnx").exists() and out.exists()


def test_graph_teacher_matches_the_onnxruntime_teacher(student):
    import torch

    from tensorfold.recovery.distill import GraphTeacher, OnnxTeacher, rewritten_outputs

    features = rewritten_outputs(onnx.load(student))
    teacher = onnx.load(TEACHER)
    a, b = OnnxTeacher(teacher, features), GraphTeacher(teacher, features, "cpu")
    x = torch.from_numpy(np.random.default_rng(0).random((4, 1, 28, 28)).astype(np.float32))
    (la, fa), (lb, fb) = a(x), b(x)  # every output of the model, then the features asked for
    assert len(la) == len(lb) == len(teacher.graph.output)
    for oa, ob in zip(la, lb):
        np.testing.assert_allclose(oa.numpy(), ob.numpy(), rtol=1e-4, atol=1e-4)
    assert set(fa) == set(fb) and len(fa) >= 2
    for name in fa:
        np.testing.assert_allclose(fa[name].numpy(), fb[name].numpy(), rtol=1e-4, atol=1e-4)


def test_steps_repeat_epochs_and_a_run_never_ends_worse_than_it_started(tmp_path):
    """Eight samples, batch 8: one step per epoch, so --max-steps 6 runs six epochs. The student is
    its own teacher: no step can beat its starting agreement of 100%, so the starting weights are
    what gets written, and the report says so."""
    model = tmp_path / "m.onnx"
    model.write_bytes(TEACHER.read_bytes())
    data = tmp_path / "few.npz"
    np.savez(data, x=np.random.default_rng(0).random((8, 1, 28, 28), dtype=np.float32))
    report = recover(
        model,
        tmp_path / "r.onnx",
        teacher_path=TEACHER,
        data=str(data),
        progress=False,
        cfg=RecoverConfig(max_steps=6, batch_size=8, lr=0.05, threads=1, eval_every=2),
    )
    assert report["steps"] == 6
    assert "starting weights are kept" in report["stop"]
    a, b = onnx.load(model), onnx.load(tmp_path / "r.onnx")
    for x, y in zip(
        sorted(a.graph.initializer, key=lambda t: t.name), sorted(b.graph.initializer, key=lambda t: t.name)
    ):
        assert np.allclose(onnx.numpy_helper.to_array(x), onnx.numpy_helper.to_array(y))


def test_one_sample_trains_and_validates_on_itself(tmp_path, student):
    data = tmp_path / "one.npz"
    np.savez(data, x=np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32))
    report = recover(
        student,
        tmp_path / "r.onnx",
        teacher_path=TEACHER,
        data=str(data),
        progress=False,
        cfg=RecoverConfig(max_steps=2, batch_size=1, threads=1),
    )
    assert report["steps"] == 2 and "too few to hold any out" in report["validation"]


def test_mutual_learning_and_generations_never_write_a_model_worse_than_given(student, tmp_path):
    """The student is its own teacher (agreement 1.0 at the start): whatever mutual learning with a
    peer or later generations do, what is written agrees with the teacher on every validation sample."""
    model = tmp_path / "m.onnx"
    model.write_bytes(TEACHER.read_bytes())
    data = tmp_path / "few.npz"
    np.savez(data, x=np.random.default_rng(0).random((40, 1, 28, 28), dtype=np.float32))
    cfg = RecoverConfig(max_steps=4, batch_size=8, lr=0.05, threads=1, eval_every=2)
    for extra in ({"peers": [student]}, {"generations": 2}):
        out = tmp_path / f"r{len(extra)}{next(iter(extra))}.onnx"
        report = recover(model, out, teacher_path=TEACHER, data=str(data), progress=False, cfg=cfg, **extra)
        assert report["val_after"]["teacher_agreement"] == 1.0, report["stop"]


def test_cli_eval_every_threads_and_a_missing_device(student, npz, tmp_path):
    out = tmp_path / "r.onnx"
    result = CliRunner().invoke(
        main,
        [
            "recover",
            str(student),
            "--teacher",
            str(TEACHER),
            "--data",
            str(npz[0]),
            "-o",
            str(out),
            "--max-steps",
            "6",
            "--batch-size",
            "32",
            "--eval-every",
            "2",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    history = json.loads((tmp_path / "r.onnx.ckpt" / "history.json").read_text())
    assert [e["step"] for e in history["evals"]] == [2, 4, 6]
    assert len(history["lr"]) == len(history["loss"]) == 6 and all(v > 0 for v in history["lr"])
    result = CliRunner().invoke(
        main,
        [
            "recover",
            str(student),
            "--teacher",
            str(TEACHER),
            "--data",
            str(npz[0]),
            "-o",
            str(tmp_path / "g.onnx"),
            "--torch-device",
            "cuda:7",
        ],
    )
    assert result.exit_code == 2 and result.output.strip().startswith("error: --torch-device cuda:7")
    assert not (tmp_path / "g.onnx").exists()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_keeps_fp32_weights(student, npz, tmp_path, precision):
    """--precision runs the forward passes under torch.autocast (fp16 with loss scaling): the loss
    falls as in fp32, the written model keeps float32 weights, and the report names the precision."""
    cfg = RecoverConfig(max_steps=12, batch_size=32, lr=3e-3, threads=1, precision=precision)
    report = recover(student, tmp_path / "r.onnx", teacher_path=TEACHER, data=str(npz[1]), cfg=cfg, progress=False)
    history = json.loads((tmp_path / "r.onnx.ckpt" / "history.json").read_text())
    assert all(np.isfinite(history["loss"]))
    assert np.mean(history["loss"][-3:]) < np.mean(history["loss"][:3])
    assert report["config"]["precision"] == precision
    out = onnx.load(tmp_path / "r.onnx")
    assert {t.data_type for t in out.graph.initializer if t.dims} == {onnx.TensorProto.FLOAT}


def test_mixed_precision_peer_path_and_a_bad_precision(student, npz, tmp_path):
    peer = tmp_path / "peer.onnx"
    optimize(TEACHER, peer, method="cp", ratio=8, progress=False)
    result = CliRunner().invoke(
        main,
        [
            "recover",
            str(student),
            "--teacher",
            str(TEACHER),
            "--peer",
            str(peer),
            "--data",
            str(npz[0]),
            "-o",
            str(tmp_path / "r.onnx"),
            "--max-steps",
            "3",
            "--batch-size",
            "32",
            "--precision",
            "bf16",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["config"]["precision"] == "bf16"
    with pytest.raises(TensorfoldError, match="--precision fp8"):
        RecoverConfig(precision="fp8")
    bad = CliRunner().invoke(
        main,
        [
            "recover",
            str(student),
            "--teacher",
            str(TEACHER),
            "--data",
            str(npz[0]),
            "-o",
            str(tmp_path / "x.onnx"),
            "--precision",
            "fp8",
        ],
    )
    assert bad.exit_code == 2 and "fp8" in bad.output


def test_self_distillation_trains_on_labels_with_a_moving_average_teacher(student, npz, tmp_path):
    """--teacher self: no original model; the student's EMA teaches (outputs and chain features),
    labels say what is right, the validation accuracy selects."""
    result = CliRunner().invoke(
        main,
        [
            "recover",
            str(student),
            "--teacher",
            "self",
            "--data",
            str(npz[0]),
            "-o",
            str(tmp_path / "r.onnx"),
            "--max-steps",
            "6",
            "--batch-size",
            "32",
            "--eval-every",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["teacher"].startswith("self") and report["metric"] == "accuracy"
    assert report["features_matched"] >= 2 and report["steps"] == 6
    assert (tmp_path / "r.onnx").exists()
    # born-again generations replace the teacher; the moving average is still compared at the end
    again = CliRunner().invoke(
        main,
        [
            "recover",
            str(student),
            "--teacher",
            "self",
            "--data",
            str(npz[0]),
            "-o",
            str(tmp_path / "g.onnx"),
            "--max-steps",
            "2",
            "--batch-size",
            "32",
            "--generations",
            "2",
            "--json",
        ],
    )
    assert again.exit_code == 0, again.output
    assert len(json.loads(again.output)["generations"]) == 2
    unlabelled = CliRunner().invoke(
        main, ["recover", str(student), "--teacher", "self", "--data", str(npz[1]), "-o", str(tmp_path / "u.onnx")]
    )
    assert unlabelled.exit_code == 2 and "needs labelled --data" in unlabelled.output
    mixed = CliRunner().invoke(
        main,
        [
            "recover",
            str(student),
            "--teacher",
            "self",
            "--teacher",
            str(TEACHER),
            "--data",
            str(npz[0]),
            "-o",
            str(tmp_path / "m.onnx"),
        ],
    )
    assert mixed.exit_code == 2 and "give it alone" in mixed.output


def test_the_moving_average_follows_the_student():
    from tensorfold.recovery.distill import EmaTeacher
    from tensorfold.recovery.onnx_torch import OnnxModule

    module = OnnxModule(onnx.load(TEACHER))
    ema = EmaTeacher(module, [], decay=0.5)
    first = next(module.parameters())
    before = next(ema.module.parameters()).clone()
    with torch.no_grad():
        first.add_(1.0)
    ema.update(module)
    torch.testing.assert_close(next(ema.module.parameters()), before + 0.5)
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_a_peer_trains_with_checkpoints_resume_and_its_own_best(student, npz, tmp_path):
    """--peer gets the student's machinery: its own best checkpoint, a place in last.pt, --resume."""
    peer = tmp_path / "peer.onnx"
    optimize(TEACHER, peer, method="cp", ratio=8, progress=False)
    out = tmp_path / "r.onnx"
    cfg = RecoverConfig(
        max_steps=4, batch_size=32, threads=1, eval_every=2, schedule="plateau", optimizer="sgd", lr=1e-3
    )
    recover(student, out, teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, peers=[peer], progress=False)
    ckdir = tmp_path / "r.onnx.ckpt"
    assert (ckdir / "best.peer1.pt").exists()
    state = torch.load(ckdir / "last.pt", weights_only=True)
    assert len(state["peers"]) == 1 and state["step"] == 4
    cfg = RecoverConfig(
        max_steps=6, batch_size=32, threads=1, eval_every=2, schedule="plateau", optimizer="sgd", lr=1e-3
    )
    report = recover(
        student, out, teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, peers=[peer], resume=True, progress=False
    )
    assert report["steps"] == 6 and report["peers"][0]["val"]["teacher_agreement"] >= 0
    with pytest.raises(TensorfoldError, match="written for another model"):
        recover(student, out, teacher_path=TEACHER, data=str(npz[0]), cfg=cfg, resume=True, progress=False)


@pytest.mark.parametrize("method", ["svd", "tucker", "tt", "cp"])
def test_every_method_names_its_chain_output_for_feature_distillation(method):
    """Feature distillation pulls each chain's output to the original layer's: every emitter, the
    TT-matrix one ending in a Reshape included, must say which value that is."""
    from tensorfold.passes import get_pass
    from tensorfold.passes.base import PassContext, RankSpec
    from tensorfold.recovery.distill import rewritten_outputs
    from tests.passes.single_node import matmul_model

    model, _ = matmul_model(64, 48)
    result = get_pass(method)(model, PassContext(spec=RankSpec(ratio=2), force=True, progress=False))
    assert result.rewritten, result.skipped
    assert rewritten_outputs(result.model) == ["y"]


def test_recompute_segments_from_the_command_line(student, npz, tmp_path):
    """recover --recompute-segments reaches the trainer's graph (the same losses as without it: the
    same steps computed), and a negative count is one error line."""
    losses = []
    for segments in ("0", "4"):
        out = tmp_path / f"r{segments}.onnx"
        result = CliRunner().invoke(
            main,
            [
                "recover",
                str(student),
                "--teacher",
                str(TEACHER),
                "--data",
                str(npz[0]),
                "-o",
                str(out),
                "--max-steps",
                "3",
                "--batch-size",
                "32",
                "--lr",
                "1e-3",
                "--threads",
                "1",
                "--recompute-segments",
                segments,
                "--json",
            ],
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["config"]["recompute_segments"] == int(segments)
        losses.append(json.loads((tmp_path / f"r{segments}.onnx.ckpt" / "history.json").read_text())["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    with pytest.raises(TensorfoldError, match="--recompute-segments"):
        RecoverConfig(recompute_segments=-1)


def test_a_node_the_trainer_cannot_run_is_named_with_the_data(student, npz, tmp_path, monkeypatch):
    from tensorfold.recovery.torch_ops import OPS

    def fails(node, *args):
        raise RuntimeError("no kernel for this")

    monkeypatch.setitem(OPS, "Relu", fails)
    out = tmp_path / "r.onnx"
    code, text = invoke("recover", student, "--teacher", TEACHER, "--data", npz[1], "--max-steps", "2", "-o", out)
    assert_user_error(code, text, "the model does not run in the trainer on the data")
    assert "Relu node '" in text and "no kernel for this" in text and not out.exists()


def test_a_resume_with_other_data_rate_or_optimizer_is_refused(student, npz, tmp_path):
    """A resumed run on other data or at another rate would continue another run's schedule and
    best-so-far (it wrote a model worse than its start); without --lr it trains at the stored rate.
    More --max-steps may extend a run (test_resume_continues)."""
    out = tmp_path / "r.onnx"
    base = ("recover", student, "--teacher", TEACHER, "--max-steps", "4", "--batch-size", "8", "-o", out)
    code, text = invoke(*base, "--data", npz[1], "--lr", "1e-4")
    assert code == 0, text
    other = tmp_path / "other.npz"
    np.savez(other, x=np.load(npz[1])["x"][:300])
    for extra, says in (
        (("--data", other, "--lr", "1e-4"), "was trained with data"),
        (("--data", npz[1], "--lr", "0.05"), "was trained with lr 0.0001, this run has 0.05"),
        (("--data", npz[1], "--lr", "1e-4", "--optimizer", "sgd"), "was trained with optimizer 'adamw'"),
    ):
        assert_user_error(*invoke(*base, *extra, "--resume"), says)
    code, text = invoke(*base, "--data", npz[1], "--resume", "--json")
    assert code == 0, text
    assert "resumed" in json.loads(text[text.index("{") :])["config"]["lr_from"]


def test_the_python_api_takes_the_cli_names(student, npz, tmp_path):
    """tensorfold.api.recover with teacher=, max_steps=, cfg as a dict and classes as the CLI's
    string (was: TypeError on teacher=, AttributeError on a dict, classes read letter by letter)."""
    from tensorfold.api import recover as api_recover

    report = api_recover(student, tmp_path / "a.onnx", teacher=TEACHER, data=str(npz[1]), max_steps=2, progress=False)
    assert report.steps == 2
    report = api_recover(student, tmp_path / "b.onnx", teacher=TEACHER, data=str(npz[1]), cfg={"max_steps": 1})
    assert report.steps == 1
    with pytest.raises(TypeError, match="unknown option"):
        api_recover(student, tmp_path / "c.onnx", teacher=TEACHER, data=str(npz[1]), maxsteps=2)
    report = api_recover(
        student, tmp_path / "e.onnx", teacher=TEACHER, data=str(npz[1]), torch_device="cpu", max_steps=1
    )
    assert report.steps == 1  # the CLI's --torch-device name
    folder = tmp_path / "imgs"
    for name in ("b", "a"):
        (folder / name).mkdir(parents=True)
    with pytest.raises(TensorfoldError, match="--classes"):  # a string is split on commas, not into letters
        api_recover(student, tmp_path / "d.onnx", teacher=TEACHER, data=str(folder), classes="a,b,c", max_steps=1)
