"""Validation against a teacher for models whose outputs are not float scores."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tensorfold.api import optimize
from tensorfold.export import export_onnx
from tensorfold.recovery.config import RecoverConfig
from tensorfold.recovery.run import recover


class Tagger(nn.Module):
    """A token tagger that ends in ArgMax: token ids in, one int64 tag per token out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.fc1, self.fc2 = nn.Embedding(100, 32), nn.Linear(32, 64), nn.Linear(64, 9)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(ids)))).argmax(-1)


def test_a_tagger_with_an_int64_argmax_output_recovers_on_agreement(tmp_path):
    """Was `KeyError: 'teacher_agreement'` (exit 1): the integer output had no argmax to count."""
    torch.manual_seed(0)
    teacher, student, calls = tmp_path / "tagger.onnx", tmp_path / "tagger.svd.onnx", tmp_path / "calls.npz"
    export_onnx(Tagger(), torch.zeros(1, 12, dtype=torch.int64), teacher)
    np.savez(calls, input=np.random.default_rng(0).integers(0, 100, (40, 12)))
    optimize(teacher, student, method="svd", ratio=2, progress=False, inputs=calls)
    report = recover(
        student,
        tmp_path / "out.onnx",
        teacher_path=[teacher],
        data=calls,
        cfg=RecoverConfig(max_steps=2, batch_size=1),
        progress=False,
    )
    got = report if isinstance(report, dict) else report.as_dict()
    assert got["metric"] == "teacher_agreement"
    assert 0.0 <= got["val_after"]["teacher_agreement"] <= 1.0
    assert "integer outputs" in got["outputs"]
    assert (tmp_path / "out.onnx").exists()


def test_a_tie_in_agreement_goes_to_the_lower_output_error():
    """Agreement on a few validation samples moves in steps of 1/n: between equal agreements the
    evaluation nearer the teacher's outputs is the better one."""
    from tensorfold.recovery.validation import ranked

    start = {"teacher_agreement": 0.8889, "output_error": 0.3241}
    later = {"teacher_agreement": 0.8889, "output_error": 0.3233}
    worse = {"teacher_agreement": 0.7778, "output_error": 0.1}
    assert ranked(later, "teacher_agreement") > ranked(start, "teacher_agreement")
    assert ranked(start, "teacher_agreement") > ranked(worse, "teacher_agreement")  # agreement first
    assert ranked(later, "output_error") > ranked(start, "output_error")
