"""The recovery batch is chosen by the activations a training step keeps: measured, not guessed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from tensorfold.demo import demo_model_path
from tensorfold.recovery import memory
from tensorfold.recovery.memory import choose_batch, saved_bytes_per_sample
from tensorfold.recovery.onnx_torch import OnnxModule
from tests.helpers.cli import invoke

DEMO = demo_model_path()


def _per_sample(module: OnnxModule, n: int) -> int:
    x = torch.from_numpy(np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32))
    return saved_bytes_per_sample(module, (x,))[1]


def test_saved_bytes_grow_with_the_batch_and_leave_the_parameters_out():
    module = OnnxModule(onnx.load(DEMO))
    one, two, eight = (_per_sample(module, n) for n in (1, 2, 8))
    assert one > 28 * 28 * 4  # more than the input: the convs' activations
    # per sample the same at any batch: the parameters (saved by each conv too) are not counted
    assert two == pytest.approx(one, rel=0.02) and eight == pytest.approx(one, rel=0.02)
    with torch.no_grad():  # nothing is saved where nothing trains
        assert _per_sample(module, 2) == 0


def test_the_default_batch_is_lowered_to_the_budget_and_a_given_one_never():
    mib = 2**20
    assert choose_batch(None, 16, 100 * mib, budget=1024 * mib).size == 10
    assert choose_batch(None, 16, 10 * mib, budget=1024 * mib).size == 16  # fits: the default
    assert choose_batch(None, 16, 4096 * mib, budget=1024 * mib).size == 1  # never below one sample
    assert choose_batch(None, 16, 0).size == 16  # nothing measured (no trainable layer): the default
    given = choose_batch(32, 16, 100 * mib, budget=1024 * mib)
    assert given.size == 32 and not given.lowered and "--batch-size" in given.describe()
    lowered = choose_batch(None, 16, 300 * mib)
    assert lowered.lowered and lowered.size == 5
    assert "batch 5, not 16: 300 MiB" in lowered.describe() and "--batch-size" in lowered.describe()


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("m") / "x.npz"
    np.savez(path, x=rng.random((48, 1, 28, 28), dtype=np.float32))
    return path


def test_optimize_recover_lowers_its_batch_to_the_budget_unless_given(samples, tmp_path, monkeypatch):
    per_sample = _per_sample(OnnxModule(onnx.load(DEMO)), 2)
    monkeypatch.setattr(memory, "ACTIVATION_BUDGET", 3.5 * per_sample)  # room for 3 samples
    args = ("optimize", DEMO, "--calibration", samples, "--ratio", "4", "--recover", "2", "--lr", "1e-4", "--json")
    code, out = invoke(*args, "-o", tmp_path / "a.onnx")
    assert code == 0, out
    recovery = json.loads(out[out.index("{") :])["recovery"]
    assert recovery["batch_size"] == 3 and "batch 3, not 16" in recovery["batch"]
    assert "--recover: batch 3, not 16" in out  # said before training, not only in the report
    code, out = invoke(*args, "-o", tmp_path / "b.onnx", "--batch-size", "8")
    assert code == 0, out
    recovery = json.loads(out[out.index("{") :])["recovery"]
    assert recovery["batch_size"] == 8 and recovery["batch"] == "batch 8 (--batch-size)"


def test_recover_lowers_its_batch_to_the_budget_unless_given(samples, tmp_path, monkeypatch):
    per_sample = _per_sample(OnnxModule(onnx.load(DEMO)), 2)
    monkeypatch.setattr(memory, "ACTIVATION_BUDGET", 5.5 * per_sample)
    args = ("recover", DEMO, "--teacher", DEMO, "--data", samples, "--max-steps", "2", "--json")
    code, out = invoke(*args, "-o", tmp_path / "a.onnx")
    assert code == 0, out
    assert "recover: batch 5, not 128" in out  # said as it starts, not only in the report
    config = json.loads(out[out.index("{") :])["config"]
    assert config["batch_size"] == 5 and config["batch_fits_memory"]
    code, out = invoke(*args, "-o", tmp_path / "b.onnx", "--batch-size", "16")
    assert code == 0, out
    config = json.loads(out[out.index("{") :])["config"]
    assert config["batch_size"] == 16 and config["batch"] == "batch 16 (--batch-size)"
    # a batch larger than the training samples is the samples: the report says what was trained at
    code, out = invoke(*args, "-o", tmp_path / "c.onnx", "--batch-size", "1000")
    assert code == 0, out
    config = json.loads(out[out.index("{") :])["config"]
    assert config["batch_size"] < 1000 and config["batch"] == f"batch {config['batch_size']}, every training sample"


@pytest.fixture(scope="module")
def tt_block(tmp_path_factory):
    """A transformer block with its matrices as Tensor-Train chains (tensorfold's own tt pass)."""
    from tensorfold.api import optimize
    from tests.fixtures.torch_models import export_transformer_block

    d = tmp_path_factory.mktemp("tt")
    optimize(export_transformer_block(d), d / "tt.onnx", method="tt", ratio=2, progress=False)
    return onnx.load(str(d / "tt.onnx"))


def test_chains_are_told_by_the_provenance_factorize_writes(tt_block):
    from tensorfold.passes.chains import provenance
    from tensorfold.recovery.onnx_torch import chain_spans

    module = OnnxModule(tt_block)
    nodes = list(tt_block.graph.node)
    assert module.chain_of == {n.name: provenance(n)["original"] for n in nodes if provenance(n)}
    chains = frozenset(module.chain_of.values())
    assert chains == {"/mlp/mlp.0/MatMul", "/mlp/mlp.2/MatMul"}  # tt at 2x: the MLP's two matrices
    assert "/attn/MatMul" not in chains  # the attention-score MatMul has no weight to factorize
    spans = chain_spans(nodes, module.chain_of, chains)
    assert len(spans) == len(chains)  # each chain's nodes follow one another
    for begin, end in spans:
        assert len({module.chain_of.get(n.name) for n in nodes[begin:end]}) == 1


def test_recomputed_chains_give_the_same_outputs_and_gradients_and_save_less(tt_block):
    from tensorfold.recovery.memory import saved_bytes_by_chain

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 16, 64)).astype(np.float32))
    module = OnnxModule(tt_block)
    total, chains = saved_bytes_by_chain(module, (x,))
    assert set(chains) == set(module.chain_of.values())
    results = []
    for recompute in (frozenset(), frozenset(chains)):
        module.recompute = recompute
        module.zero_grad()
        (y,) = module(x)
        y.square().mean().backward()
        results.append((y.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]))
    (y0, g0), (y1, g1) = results
    assert torch.equal(y0, y1) and len(g0) == len(g1) and all(torch.allclose(a, b) for a, b in zip(g0, g1))
    lower, left = saved_bytes_by_chain(module, (x,))
    assert lower < total - 0.5 * sum(chains.values()) and not left  # the chains keep nothing themselves


def test_recompute_to_fit_takes_the_largest_savers_until_the_input_s_bytes_fit(tt_block):
    from tensorfold.recovery.memory import RECOMPUTE_SLACK, recompute_to_fit, saved_bytes_by_chain

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 16, 64)).astype(np.float32))
    module = OnnxModule(tt_block)
    total, chains = saved_bytes_by_chain(module, (x,))
    assert recompute_to_fit(module, (x,), total) == [] and module.recompute == frozenset()  # it fits
    largest = max(chains, key=lambda c: chains[c])
    just_over = int((total - chains[largest]) / (1 + RECOMPUTE_SLACK)) + 1
    assert recompute_to_fit(module, (x,), just_over) == [largest] and module.recompute == {largest}
    assert recompute_to_fit(module, (x,), 1) == sorted(chains, key=lambda c: -chains[c])
    assert recompute_to_fit(module, (x,), 0) == []  # nothing measured on the input: nothing to keep to
