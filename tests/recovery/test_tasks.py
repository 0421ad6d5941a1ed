"""recover on models that are not classifiers: a detector-like map, a model with a map and class
scores, labels that do not apply. Validation follows the teacher-relative output error there."""

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tensorfold.api import optimize
from tensorfold.recovery.config import RecoverConfig
from tensorfold.recovery.distill import Outputs
from tensorfold.recovery.run import recover


class MapNet(nn.Module):
    """A tiny text-detector shape: conv features -> a sigmoid probability map (N, 1, H, W)."""

    def __init__(self, heads: bool = False):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 24, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(24, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
        )
        self.map = nn.Conv2d(32, 1, 1)
        self.heads = heads
        self.cls = nn.Linear(32, 5)

    def forward(self, x):
        f = self.body(x)
        prob = torch.sigmoid(self.map(f))
        if not self.heads:
            return prob
        return prob, self.cls(f.mean((2, 3)))


def _export(module, path, outputs=("output",), example=None, names=("input",), dynamic=True, axes=None):
    """ONNX export, the batch dynamic unless `dynamic=False` (a fixed-batch export); `axes` names
    the dynamic axes instead."""
    module.eval()
    example = example if example is not None else (torch.zeros(1, 3, 16, 16),)
    axes = axes or ({n: {0: "batch"} for n in [*names, *outputs]} if dynamic else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=list(names),
            output_names=list(outputs),
            dynamic_axes=axes,
        )
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    torch.manual_seed(0)
    teacher = _export(MapNet(), root / "map.onnx")
    student = root / "map.small.onnx"
    optimize(teacher, student, method="tucker", ratio=4, progress=False)
    torch.manual_seed(1)
    two = _export(MapNet(heads=True), root / "two.onnx", ("prob", "scores"))
    two_small = root / "two.small.onnx"
    optimize(two, two_small, method="tucker", ratio=4, progress=False)
    rng = np.random.default_rng(0)
    x = rng.random((160, 3, 16, 16)).astype(np.float32)
    np.savez(root / "x.npz", x=x)
    np.savez(root / "xy.npz", x=x, y=rng.integers(0, 5, 160))
    return {
        "teacher": teacher,
        "student": student,
        "two": two,
        "two_small": two_small,
        "x": root / "x.npz",
        "xy": root / "xy.npz",
    }


def test_outputs_know_their_class_axes(models):
    assert Outputs.of(onnx.load(models["teacher"])).axes == {}
    spec = Outputs.of(onnx.load(models["two"]))
    assert spec.axes == {1: 1} and not spec.classifier
    assert "scores" in spec.describe() and "prob" in spec.describe()


def test_a_map_model_recovers_by_output_error(models, tmp_path):
    cfg = RecoverConfig(max_steps=30, batch_size=16, lr=1e-3, threads=1, eval_every=10)
    report = recover(
        models["student"],
        tmp_path / "r.onnx",
        teacher_path=models["teacher"],
        data=str(models["x"]),
        cfg=cfg,
        progress=False,
    )
    assert report["metric"] == "output_error"
    assert "teacher_agreement" not in report["val_after"]  # no class axis: no argmax to agree on
    before, after = report["val_before"]["output_error"], report["val_after"]["output_error"]
    assert 0 < after < before
    evals = json.loads((tmp_path / "r.onnx.ckpt" / "history.json").read_text())["evals"]
    assert all("output_error" in e for e in evals)


def test_two_outputs_distill_both_and_report_agreement_on_scores(models, tmp_path):
    cfg = RecoverConfig(max_steps=20, batch_size=16, lr=1e-3, threads=1, eval_every=10)
    report = recover(
        models["two_small"],
        tmp_path / "r.onnx",
        teacher_path=models["two"],
        data=str(models["x"]),
        cfg=cfg,
        progress=False,
    )
    assert report["metric"] == "output_error"  # the first output is a map: the error selects
    assert 0 <= report["val_after"]["teacher_agreement"] <= 1
    assert report["val_after"]["output_error"] <= report["val_before"]["output_error"]


def test_labels_for_a_model_without_class_scores_are_ignored_with_a_warning(models, tmp_path, capsys):
    cfg = RecoverConfig(max_steps=2, batch_size=16, threads=1)
    report = recover(
        models["student"],
        tmp_path / "r.onnx",
        teacher_path=models["teacher"],
        data=str(models["xy"]),
        cfg=cfg,
        progress=False,
    )
    assert "labels are ignored" in capsys.readouterr().err
    assert report["metric"] == "output_error" and "accuracy" not in report["val_after"]


def _cut_and_recover(model, x: np.ndarray, tmp_path, steps: int) -> dict:
    """Tucker-2 at ratio 2, then a few recovery steps on `x` (unlabelled) from the model as teacher."""
    small = tmp_path / "small.onnx"
    optimize(model, small, method="tucker", ratio=2, progress=False)
    np.savez(tmp_path / "x.npz", x=x)
    return recover(
        small,
        tmp_path / "r.onnx",
        teacher_path=model,
        data=str(tmp_path / "x.npz"),
        cfg=RecoverConfig(max_steps=steps, batch_size=8, threads=1),
        progress=False,
    )


class Audio(nn.Module):
    """A 1-D model as audio front ends are built: reflection pad, strided conv, conv, a per-frame head."""

    def __init__(self):
        super().__init__()
        self.pad = nn.ReflectionPad1d(3)
        self.c1 = nn.Conv1d(1, 32, 7, stride=2)
        self.c2 = nn.Conv1d(32, 32, 5, padding=2, padding_mode="replicate")
        self.head = nn.Conv1d(32, 1, 1)

    def forward(self, x):
        return torch.sigmoid(self.head(torch.relu(self.c2(torch.relu(self.c1(self.pad(x)))))))


class FixedBatch(nn.Module):
    """Exported with batch 1: its Reshape holds the batch as a constant."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 24, 3, padding=1)
        self.c2 = nn.Conv2d(24, 24, 3, padding=1)
        self.fc = nn.Linear(24 * 8 * 8, 6)

    def forward(self, x):
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)))).reshape(1, -1))


def test_a_1d_model_with_reflect_pads_trains_and_matches_onnxruntime(tmp_path):
    from tensorfold.onnxrt.sessions import make_session
    from tensorfold.recovery.onnx_torch import OnnxModule

    torch.manual_seed(0)
    model = _export(Audio(), tmp_path / "audio.onnx", ("frames",), (torch.zeros(1, 1, 400),))
    x = np.random.default_rng(0).standard_normal((24, 1, 400)).astype(np.float32)
    pads = [n for n in onnx.load(model).graph.node if n.op_type == "Pad"]
    assert pads, "the export should hold a Pad node"
    got = OnnxModule(onnx.load(model))(torch.from_numpy(x[:4]))[0].detach().numpy()
    want = make_session(onnx.load(model)).run(None, {"input": x[:4]})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    report = _cut_and_recover(model, x, tmp_path, steps=4)
    assert report["steps"] == 4 and report["metric"] == "output_error"


def test_a_fixed_batch_model_trains_on_any_batch(tmp_path):
    from tensorfold.recovery.onnx_torch import OnnxModule

    torch.manual_seed(0)
    model = _export(FixedBatch(), tmp_path / "fixed.onnx", ("logits",), (torch.zeros(1, 3, 8, 8),), dynamic=False)
    x = np.random.default_rng(0).random((40, 3, 8, 8)).astype(np.float32)
    module = OnnxModule(onnx.load(model))
    assert module.fixed_batch == 1
    batched = module(torch.from_numpy(x[:7]))[0]  # 7 calls of batch 1, joined
    one_by_one = torch.cat([module(torch.from_numpy(x[i : i + 1]))[0] for i in range(7)])
    assert batched.shape == (7, 6)
    torch.testing.assert_close(batched, one_by_one)
    assert module._batch_layouts[()] is None  # its Reshape holds the batch: it runs in slices
    report = _cut_and_recover(model, x, tmp_path, steps=3)
    assert report["steps"] == 3 and report["metric"] == "teacher_agreement"
    assert onnx.load(tmp_path / "r.onnx").graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1


class TimeMajor(nn.Module):
    """A CRNN's head as ddddocr's recognizer has it: exported with batch 1 and a dynamic width,
    conv features become a time-major sequence, folded to (T x batch, features) for a Linear, and
    the class scores come out (T, batch, classes). Its Reshapes take the batch from Shape."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4, 64)
        self.out = nn.Linear(64, 7)

    def forward(self, x):
        f = torch.relu(self.conv(x))  # (batch, 16, 4, T)
        t, b = f.shape[3], f.shape[0]
        seq = f.permute(3, 0, 1, 2).reshape(t * b, -1)  # (T x batch, 64), the batch innermost
        return self.out(torch.relu(self.fc(seq))).reshape(t, b, -1)


def test_time_major_outputs_of_a_fixed_batch_model_stack_as_onnxruntime_stacks_them(tmp_path):
    from tensorfold.recovery.distill import OnnxTeacher
    from tensorfold.recovery.onnx_torch import OnnxModule

    torch.manual_seed(0)
    axes = {"input": {3: "width"}, "scores": {0: "steps"}}  # the batch fixed, the width not
    model = _export(TimeMajor(), tmp_path / "crnn.onnx", ("scores",), (torch.zeros(1, 1, 4, 10),), axes=axes)
    x = torch.from_numpy(np.random.default_rng(0).random((6, 1, 4, 10)).astype(np.float32))
    proto = onnx.load(model)
    fold = next(n.output[0] for n in proto.graph.node if n.op_type == "Gemm")  # (T x batch, 64)
    module = OnnxModule(proto)
    got, feats = module(x, capture=(fold,))
    want, want_feats = OnnxTeacher(proto, [fold])(x)
    assert got[0].shape == want[0].shape == (6 * 10, 1, 7)  # six calls of (T=10, 1, 7), stacked
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(feats[fold], want_feats[fold], rtol=1e-4, atol=1e-5)
    # the export runs on the whole batch at once, its batch on axis 1 and innermost in the fold
    assert module._batch_layouts[(fold,)] == {"output:0": (1, False), fold: (0, True)}
    sliced = module._sliced((x,), (fold,))
    torch.testing.assert_close(sliced[1][fold], feats[fold], rtol=1e-4, atol=1e-5)
    samples = tmp_path / "lines.npz"
    np.savez(samples, input=np.random.default_rng(1).random((48, 1, 4, 10)).astype(np.float32))
    report = optimize(
        model, tmp_path / "small.onnx", method="svd", ratio=2, calibration=str(samples), recover=4, lr=1e-4,
        progress=False,
    )  # fmt: skip
    assert report.recovery["steps"] == 4 and report.verification.max_error < 1
    assert (tmp_path / "small.onnx").exists()


class Tokens(nn.Module):
    """Token ids in, class scores out, exported with a fixed batch of 1 (as BERT-style exports often are)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.mix = nn.Linear(32, 64)
        self.out = nn.Linear(64, 4)

    def forward(self, ids):
        return self.out(torch.relu(self.mix(self.embed(ids))).mean(1))


def _tokens_model(path, dtype=torch.int64):
    """Tokens exported with a fixed (1, 12) input of token ids of `dtype`."""
    torch.manual_seed(0)
    return _export(Tokens(), path, ("scores",), (torch.zeros(1, 12, dtype=dtype),), names=("ids",), dynamic=False)


def test_integer_token_inputs_pass_through_and_train(tmp_path):
    model = _tokens_model(tmp_path / "tokens.onnx")
    small = tmp_path / "tokens.small.onnx"
    optimize(model, small, method="svd", ratio=2, progress=False, inputs=str(_ids(tmp_path / "ids.npz", 1)))
    data = _ids(tmp_path / "train.npz", 64)
    report = recover(
        small,
        tmp_path / "r.onnx",
        teacher_path=model,
        data=str(data),
        cfg=RecoverConfig(max_steps=4, batch_size=8, threads=1),
        progress=False,
    )
    assert report["steps"] == 4 and report["metric"] == "teacher_agreement"
    assert report["val_after"]["teacher_agreement"] >= 0


def test_int32_inputs_reach_the_teacher_as_int32(tmp_path):
    """magika takes int32 byte features: the samples were read as int64 and onnxruntime refused the
    teacher them ("internal error ... expected: (tensor(int32))")."""
    model = _tokens_model(tmp_path / "tokens32.onnx", torch.int32)
    assert onnx.load(str(model)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    data = tmp_path / "train.npz"
    np.savez(data, ids=np.random.default_rng(1).integers(0, 50, (64, 12)).astype(np.int32))
    report = recover(
        model,
        tmp_path / "r.onnx",
        teacher_path=model,
        data=str(data),
        cfg=RecoverConfig(max_steps=2, batch_size=8, threads=1),
        progress=False,
    )
    assert report["steps"] == 2


def _ids(path, n):
    np.savez(path, ids=np.random.default_rng(n).integers(0, 50, (n, 12)).astype(np.int64))
    return path


def test_an_image_folder_is_read_per_batch_with_workers(tmp_path, monkeypatch, models):
    """A flat folder of PNGs (unlabelled) trains without ever being decoded whole; DataLoader
    workers decode ahead and give the very batches the training process would."""
    from PIL import Image

    import tensorfold.datasets as datasets

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(48):
        Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(folder / f"f{i:02d}.png")

    def whole(*_a, **_k):
        raise AssertionError("the folder was decoded whole")

    monkeypatch.setattr(datasets, "load_image_folder", whole)
    losses = []
    for workers in (0, 2):
        out = tmp_path / f"r{workers}.onnx"
        cfg = RecoverConfig(max_steps=4, batch_size=8, threads=1, workers=workers)
        report = recover(
            models["student"],
            out,
            teacher_path=models["teacher"],
            data=str(folder),
            cfg=cfg,
            normalize=([0.5], [0.5]),
            progress=False,
        )
        assert "read per batch" in report["data"] and report["train_size"] + report["val_size"] == 48
        losses.append(json.loads((tmp_path / f"r{workers}.onnx.ckpt" / "history.json").read_text())["loss"])
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_scalars_are_part_of_the_function_and_softmax_outputs_are_distilled_as_logs():
    """A scalar initializer (an exponent, a bound: PaddlePaddle's p2o_helper_constant_*) is not
    trained: Pow's gradient in its exponent is NaN for a negative base, which broke PP-OCRv4 rec's
    first step. PRelu's one slope stays learnable. A Softmax output's KD uses log-probabilities."""
    from onnx import TensorProto, helper

    from tensorfold.recovery.distill import hinton_kd, output_loss
    from tensorfold.recovery.onnx_torch import OnnxModule

    inits = [
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("slope", TensorProto.FLOAT, [1], [0.25]),
        helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32)),
    ]
    nodes = [
        helper.make_node("Pow", ["x", "two"], ["p"]),
        helper.make_node("PRelu", ["p", "slope"], ["q"]),
        helper.make_node("MatMul", ["q", "w"], ["z"]),
        helper.make_node("Softmax", ["z"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    module = OnnxModule(model)
    grad = {name: module.params[key].requires_grad for name, key in module.param_of.items()}
    assert grad == {"two": False, "slope": True, "w": True}
    spec = Outputs.of(model)
    assert spec.axes == {0: -1} and spec.probabilities == {0}
    s = torch.softmax(torch.randn(5, 3), -1)
    t = torch.softmax(torch.randn(5, 3), -1)
    torch.testing.assert_close(output_loss([s], [t], spec, 4.0), hinton_kd(s.log(), t.log(), 4.0))


def test_a_decoder_that_stops_at_another_step_is_distilled_on_the_steps_both_took():
    """SLANet's table decoder ends at its end token: a student may emit 50 steps where its teacher
    emitted 52. The loss compares the 50 both took (it raised a shape error before)."""
    from tensorfold.recovery.distill import feature_loss, output_loss, relative_error2

    t = torch.randn(2, 52, 30)
    s = (t[:, :50] + 0.1 * torch.randn(2, 50, 30)).requires_grad_()
    spec = Outputs(names=("tokens",), axes={})
    loss = output_loss([s], [t], spec, 4.0, kd=False)
    torch.testing.assert_close(loss, relative_error2(s, t[:, :50]))
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    torch.testing.assert_close(feature_loss({"f": t[:, :50]}, {"f": t}), torch.tensor(0.0))
