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
from tensorfold.recovery.distill import Outputs
from tensorfold.recovery.finetune import RecoverConfig
from tensorfold.recovery.run import recover


class MapNet(nn.Module):
    """A tiny text-detector shape: conv features -> a sigmoid probability map (N, 1, H, W)."""

    def __init__(self, heads: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.map = nn.Conv2d(32, 1, 1)
        self.heads = heads
        self.cls = nn.Linear(32, 5)

    def forward(self, x):
        f = self.body(x)
        prob = torch.sigmoid(self.map(f))
        if not self.heads:
            return prob
        return prob, self.cls(f.mean((2, 3)))


def _export(module, path, outputs=("output",)):
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=list(outputs),
                          dynamic_axes={"input": {0: "batch"}, **{o: {0: "batch"} for o in outputs}})
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
    return {"teacher": teacher, "student": student, "two": two, "two_small": two_small,
            "x": root / "x.npz", "xy": root / "xy.npz"}


def test_outputs_know_their_class_axes(models):
    assert Outputs.of(onnx.load(models["teacher"])).axes == {}
    spec = Outputs.of(onnx.load(models["two"]))
    assert spec.axes == {1: 1} and not spec.classifier
    assert "scores" in spec.describe() and "prob" in spec.describe()


def test_a_map_model_recovers_by_output_error(models, tmp_path):
    cfg = RecoverConfig(max_steps=30, batch_size=16, lr=1e-3, threads=1, eval_every=10)
    report = recover(models["student"], tmp_path / "r.onnx", teacher_path=models["teacher"], data=str(models["x"]),
                     cfg=cfg, progress=False)
    assert report["metric"] == "output_error"
    assert "teacher_agreement" not in report["val_after"]      # no class axis: no argmax to agree on
    before, after = report["val_before"]["output_error"], report["val_after"]["output_error"]
    assert 0 < after < before
    evals = json.loads((tmp_path / "r.onnx.ckpt" / "history.json").read_text())["evals"]
    assert all("output_error" in e for e in evals)


def test_two_outputs_distill_both_and_report_agreement_on_scores(models, tmp_path):
    cfg = RecoverConfig(max_steps=20, batch_size=16, lr=1e-3, threads=1, eval_every=10)
    report = recover(models["two_small"], tmp_path / "r.onnx", teacher_path=models["two"], data=str(models["x"]),
                     cfg=cfg, progress=False)
    assert report["metric"] == "output_error"      # the first output is a map: the error selects
    assert 0 <= report["val_after"]["teacher_agreement"] <= 1
    assert report["val_after"]["output_error"] <= report["val_before"]["output_error"]


def test_labels_for_a_model_without_class_scores_are_ignored_with_a_warning(models, tmp_path, capsys):
    cfg = RecoverConfig(max_steps=2, batch_size=16, threads=1)
    report = recover(models["student"], tmp_path / "r.onnx", teacher_path=models["teacher"], data=str(models["xy"]),
                     cfg=cfg, progress=False)
    assert "labels are ignored" in capsys.readouterr().err
    assert report["metric"] == "output_error" and "accuracy" not in report["val_after"]
