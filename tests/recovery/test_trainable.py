"""Which weights a recovery trains: the factor chains tensorfold wrote by default, or every weight."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from tensorfold.api import optimize
from tensorfold.demo import demo_model_path
from tensorfold.errors import TensorfoldError
from tensorfold.recovery.config import RecoverConfig
from tensorfold.recovery.onnx_torch import OnnxModule
from tensorfold.recovery.trainable import TrainedWeights, describe_runs, train_only
from tests.helpers.cli import invoke

DEMO = str(demo_model_path())


@pytest.fixture(scope="module")
def partly_cut(tmp_path_factory):
    """The demo CNN with only its first conv and its classifier cut (SVD/Tucker), the rest whole."""
    path = tmp_path_factory.mktemp("t") / "cut.onnx"
    model = onnx.load(DEMO)
    weighty = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    optimize(DEMO, path, method="svd", ratio=2, include=(weighty[0], weighty[-1]), progress=False)
    return path


def _chain_inputs(model: onnx.ModelProto) -> set[str]:
    from tensorfold.passes.chains import provenance

    return {i for n in model.graph.node if provenance(n) is not None for i in n.input}


def test_chains_train_and_every_other_weight_stays(partly_cut):
    model = onnx.load(str(partly_cut))
    module = OnnxModule(model)
    trained = train_only(module, "chains")
    chain_inputs = _chain_inputs(model)
    learning = {name for name, key in module.param_of.items() if module.params[key].requires_grad}
    assert learning and learning <= chain_inputs
    others = [
        name
        for name in module.param_of
        if name not in chain_inputs and module.params[module.param_of[name]].numel() > 1
    ]
    assert others and not learning & set(others)  # the layers left whole are fixed
    assert trained.trained == sum(module.params[module.param_of[n]].numel() for n in learning)
    assert 0 < trained.trained < trained.total and "--train all" in trained.describe()
    # a step moves the chains only
    x = torch.from_numpy(np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32))
    before = {k: v.detach().clone() for k, v in module.state_dict().items()}
    (y,) = module(x)
    y.square().mean().backward()
    torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1).step()
    moved = {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and moved <= {f"params.{module.param_of[n]}" for n in learning}


def test_all_trains_every_weight_and_a_model_without_chains_trains_every_weight(partly_cut):
    module = OnnxModule(onnx.load(str(partly_cut)))
    every = sum(p.numel() for p in module.parameters() if p.requires_grad)
    assert train_only(module, "all").trained == every == sum(p.numel() for p in module.parameters() if p.requires_grad)
    plain = OnnxModule(onnx.load(DEMO))  # no factor chains: nothing would train
    trained = train_only(plain, "chains")
    assert not trained.chains_found and trained.trained == trained.total > 0
    assert all(p.requires_grad for p in plain.parameters() if p.numel() > 1)
    assert "no factor chains" in trained.describe()
    with pytest.raises(ValueError):
        train_only(plain, "some")
    with pytest.raises(TensorfoldError, match="--train"):
        RecoverConfig(train="some")


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_optimize_recover_leaves_the_layers_it_kept_whole_bit_for_bit(tmp_path):
    rng = np.random.default_rng(0)
    samples = tmp_path / "x.npz"
    np.savez(samples, x=rng.random((40, 1, 28, 28), dtype=np.float32))
    weighty = [n.name for n in onnx.load(DEMO).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    common = ("optimize", DEMO, "--calibration", samples, "--method", "svd", "--ratio", "2", "--recover", "3")
    common += ("--include", weighty[0], "--include", weighty[-1], "--lr", "1e-3", "--json")
    code, out = invoke(*common, "-o", tmp_path / "chains.onnx")
    assert code == 0, out
    assert "factor chains'" in json.loads(out[out.index("{") :])["recovery"]["trained"]
    code, out = invoke(*common, "-o", tmp_path / "all.onnx", "--train", "all")
    assert code == 0, out
    assert json.loads(out[out.index("{") :])["recovery"]["trained"].startswith("every weight")
    source = _weights(DEMO)
    chains, every = _weights(tmp_path / "chains.onnx"), _weights(tmp_path / "all.onnx")
    whole = [n for n in source if n in chains and source[n].size > 1]
    assert whole and all(np.array_equal(chains[n], source[n]) for n in whole)
    assert set(every) == set(chains)


def test_train_is_a_choice_and_sets_up_recover(tmp_path):
    code, out = invoke("optimize", DEMO, "--ratio", "2", "--train", "all", "-o", tmp_path / "o.onnx")
    assert code == 2 and "--train sets up --recover" in out
    code, out = invoke(
        "recover", DEMO, "--teacher", DEMO, "--data", "x.npz", "--train", "some", "-o", tmp_path / "r.onnx"
    )
    assert code == 2 and "'some' is not one of" in out


def test_recover_says_what_trained(partly_cut, tmp_path):
    samples = tmp_path / "x.npz"
    np.savez(samples, x=np.random.default_rng(1).random((24, 1, 28, 28), dtype=np.float32))
    args = ("recover", partly_cut, "--teacher", DEMO, "--data", samples, "--max-steps", "2", "--lr", "1e-3", "--json")
    code, out = invoke(*args, "-o", tmp_path / "r.onnx")
    assert code == 0, out
    report = json.loads(out[out.index("{") :])
    assert "factor chains'" in report["trained"] and report["config"]["train"] == "chains"
    source, written = _weights(partly_cut), _weights(tmp_path / "r.onnx")
    whole = [n for n in source if n not in _chain_inputs(onnx.load(str(partly_cut))) and source[n].size > 1]
    assert whole and all(np.array_equal(written[n], source[n]) for n in whole)


def test_a_search_reports_each_candidates_count_not_the_first_alone():
    one = TrainedWeights(31_174, 92_706, "chains")
    assert describe_runs([one, one]) == one.describe()
    fewer = TrainedWeights(20_112, 81_644, "chains")
    text = describe_runs([one, fewer, one])
    assert "20,112 of 81,644 to 31,174 of 92,706 by candidate" in text
    every = TrainedWeights(92_706, 92_706, "all")
    assert describe_runs([every, TrainedWeights(81_644, 81_644, "all")]).count("every weight trained") == 2
