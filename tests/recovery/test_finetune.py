"""recovery.finetune's optimizer: Adam's rate scaled per tensor, so a tiny tensor is not swept away."""

from __future__ import annotations

import torch

from tensorfold.recovery.config import RecoverConfig
from tensorfold.recovery.finetune import make_optimizer, scaled_groups, set_lr


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    with torch.no_grad():
        net[0].weight.mul_(1e-4)  # a folded conv whose weights are all but zero (PP-OCRv4 det has one)
    return net


def test_a_tensor_below_the_median_trains_at_its_share_of_the_rate():
    net = _net()
    groups = scaled_groups(list(net.parameters()))
    assert groups[0]["scale"] == 1.0 and all(p is not net[0].weight for p in groups[0]["params"])
    (tiny,) = [g for g in groups if g["params"][0] is net[0].weight]
    rms = [float(m.weight.detach().pow(2).mean().sqrt()) for m in net]
    assert abs(tiny["scale"] / (rms[0] / sorted(rms)[1]) - 1) < 1e-6
    assert all(p.dim() < 2 for p in groups[0]["params"] if p is not net[1].weight and p is not net[2].weight)


def test_adam_changes_every_tensor_by_about_the_same_share_of_itself():
    """One Adam step moves each element by about the rate: unscaled, the tiny tensor would change
    by ~1e3 of itself; scaled, by the same share as the others."""
    net = _net()
    opt = make_optimizer(net, RecoverConfig(lr=1e-3, weight_decay=0.0))
    before = [m.weight.detach().clone() for m in net]
    net(torch.randn(4, 8)).pow(2).sum().backward()
    opt.step()
    shares = [float((m.weight.detach() - b).norm() / b.norm()) for m, b in zip(net, before)]
    assert max(shares) < 10 * min(shares), shares
    set_lr(opt, 2e-3)
    assert [g["lr"] for g in opt.param_groups] == [2e-3 * g["scale"] for g in opt.param_groups]


def test_tensors_of_one_size_keep_one_group_at_the_rate():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    with torch.no_grad():
        net[1].weight.copy_(net[0].weight)
    (group,) = make_optimizer(net, RecoverConfig(lr=1e-4)).param_groups
    assert group["lr"] == 1e-4 and len(group["params"]) == 4
