import json
import re

import numpy as np
import pytest
import torch

from tensorfold.errors import TensorfoldError
from tensorfold.onnxrt.sessions import make_session
from tensorfold.search.nas.darts import SuperNet
from tensorfold.search.nas.space import (
    DISCRETE_OPS,
    Genotype,
    NetConfig,
    Network,
    export_network,
    genotype_from_dict,
    load_genotype,
    mutate,
    random_genotype,
)

EVERY_OP = {
    "normal": [
        [["sep_conv_3x3", 0], ["sep_conv_5x5", 1]],
        [["dil_conv_3x3", 2], ["dil_conv_5x5", 1]],
        [["conv_3x3", 3], ["skip_connect", 0]],
    ],
    "reduce": [
        [["max_pool_3x3", 0], ["avg_pool_3x3", 1]],
        [["conv_5x5", 2], ["skip_connect", 1]],
        [["skip_connect", 0], ["conv_3x3", 3]],
    ],
}


def test_every_op_exports_to_onnx_and_matches_torch(tmp_path):
    g = genotype_from_dict(EVERY_OP)
    assert {o for cell in (g.normal, g.reduce) for node in cell for o, _ in node} == set(DISCRETE_OPS)
    torch.manual_seed(0)
    net = Network(g, NetConfig(channels=4, layers=5))
    x = torch.randn(3, 1, 28, 28)
    net.train()(x)  # move the BN statistics off their initial values
    want = net.eval()(x).detach().numpy()
    path = export_network(net, tmp_path / "net.onnx")
    got = make_session(str(path)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_genotype_round_trip_and_mutation():
    rng = np.random.default_rng(0)
    g = random_genotype(rng)
    assert genotype_from_dict(json.loads(g.to_json())) == g
    child = mutate(g, rng)
    diffs = sum(
        a != b for c in ("normal", "reduce") for na, nb in zip(getattr(g, c), getattr(child, c)) for a, b in zip(na, nb)
    )
    assert diffs == 1
    assert "normal:" in str(g)


@pytest.mark.parametrize(
    "data, message",
    [
        (
            {"normal": [[["warp_drive", 0], ["skip_connect", 1]]], "reduce": [[["skip_connect", 0], ["conv_3x3", 1]]]},
            "unknown op 'warp_drive'",
        ),
        (
            {"normal": [[["none", 0], ["skip_connect", 1]]], "reduce": [[["skip_connect", 0], ["conv_3x3", 1]]]},
            "unknown op 'none'",
        ),
        (
            {"normal": [[["conv_3x3", 2], ["skip_connect", 1]]], "reduce": [[["skip_connect", 0], ["conv_3x3", 1]]]},
            "reads input 2",
        ),
        ({"normal": []}, "exactly the keys"),
        ({"normal": [[["conv_3x3", 0]]], "reduce": [[["conv_3x3", 0]]]}, "two [op, input] pairs"),
    ],
)
def test_bad_genotypes_are_named_errors(tmp_path, data, message):
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"genotype": data}))
    with pytest.raises(TensorfoldError, match=re.escape(message)):
        load_genotype(path)


def test_supernet_runs_and_derives_a_valid_genotype():
    net = SuperNet(NetConfig(channels=4, layers=3), nodes=3)
    out = net(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert net.alpha_normal.grad is not None and net.alpha_reduce.grad is not None
    with torch.no_grad():
        net.alpha_normal.zero_()
        net.alpha_normal[:, 1] = 5.0  # skip_connect dominates every edge
    g = net.genotype()
    assert isinstance(g, Genotype) and g.count("skip_connect") == 6
    genotype_from_dict(g.as_dict())  # never derives "none" or a bad input
