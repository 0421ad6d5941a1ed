"""The pass contract: a pass that edits its input model in place is caught (when checked)."""

from __future__ import annotations

import numpy as np
import pytest

from tensorfold.passes.base import Pass, PassContext, PassResult
from tests.passes.single_node import conv_model


class _Mutating(Pass):
    name = "mutating-test-pass"

    def call(self, model, ctx):
        model.graph.node[0].name = "renamed"
        return PassResult(model, True)


def test_a_pass_that_edits_its_input_is_caught(monkeypatch):
    model, _ = conv_model(np.ones((4, 2, 3, 3), np.float32), bias=False)
    monkeypatch.setenv("TENSORFOLD_CHECK_PASSES", "1")
    with pytest.raises(RuntimeError, match="modified its input model in place"):
        _Mutating()(model, PassContext(progress=False))
    monkeypatch.setenv("TENSORFOLD_CHECK_PASSES", "0")  # users do not pay for the proof
    _Mutating()(model, PassContext(progress=False))
