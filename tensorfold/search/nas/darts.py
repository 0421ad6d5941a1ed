"""DARTS (Liu et al. 2019): a supernet of mixed ops, architecture weights alpha learned by bilevel
optimization against network weights w, and a discrete genotype derived at the end.

First order: alpha follows the validation loss at the current w. Second order: the validation
loss at one virtual SGD step w' = w - xi * dL_train/dw, with the Hessian-vector product by finite
differences (eq. 7-8 of the paper).

Collapse guard. DARTS drifts to cells full of parameter-free skip connections when searched long
(Zela et al. 2020; DARTS+ by Liang et al. 2019). Two guards:
  earlystop  (DARTS+) derive the genotype after every epoch and stop once the normal cell holds
             SKIP_LIMIT or more skip connections, or half or more of its edges are parameter-free
             (skips and pools: a cell of pools collapses as surely as one of skips), returning
             the genotype of the epoch before;
  aux-skip   (DARTS-, Chu et al. 2021) an auxiliary skip beside every stride-1 mixed op, its
             weight beta decaying 1 -> 0 over the search, so skip stops being the easy way to
             pass gradients.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tensorfold.errors import TensorfoldError
from tensorfold.search.nas.space import OPS, Genotype, NetConfig, _build, make_op
from tensorfold.search.nas.train import accuracy

SKIP_LIMIT = 2
MIN_EPOCHS = 3  # epochs a budget must hold: the guard compares each epoch's genotype with the last
MIN_STEPS = 10  # steps an epoch needs to move alpha at all
PARAMETER_FREE = ("skip_connect", "max_pool_3x3", "avg_pool_3x3")


def parameter_free(genotype: Genotype) -> int:
    return sum(genotype.count(op) for op in PARAMETER_FREE)


def collapse(genotype: Genotype, epoch: int = 2, before: Genotype | None = None) -> str | None:
    """Why the normal cell counts as collapsed, or None: SKIP_LIMIT skips, or (from the second epoch
    on) parameter-free ops on half or more of its edges *and more of them than the epoch before*
    (`before`). Parameter-free ops learn fastest, so early on pools often lead on alphas that have
    hardly moved and then recede: on Fashion-MNIST with a 2-minute budget a pool rule at epoch 1
    stopped the search with 5 of 6 edges pools, and with a 6-minute budget a rule without the trend
    stopped at epoch 2 on 3 of 6 pools, after 4 of 6 at epoch 1, and kept the worse epoch."""
    skips = genotype.count("skip_connect")
    if skips >= SKIP_LIMIT:
        return f"{skips} skip connections in the normal cell"
    if epoch < 2:
        return None
    edges = sum(len(node) for node in genotype.normal)
    free = parameter_free(genotype)
    rising = before is None or free > parameter_free(before)
    if edges and free * 2 >= edges and rising:
        return f"{free} of the normal cell's {edges} edges parameter-free (skips and pools), rising"
    return None


GUARDS = ("earlystop", "aux-skip", "none")


class DartsBudgetError(TensorfoldError):
    """The search's time cannot hold MIN_EPOCHS epochs of MIN_STEPS steps at this width."""

    def __init__(self, budget_s: float, need_s: float):
        self.short = f"{MIN_EPOCHS} epochs of {MIN_STEPS} steps take about {need_s / 60:.1f} min"
        super().__init__(
            f"the search's time ({budget_s / 60:.1f} min) is too small for DARTS here: {self.short}; "
            f"raise --budget-minutes"
        )


class MixedOp(nn.Module):
    def __init__(self, c: int, stride: int, beta: list):
        super().__init__()
        self.ops = nn.ModuleList(make_op(name, c, stride) for name in OPS)
        self.stride, self.beta = stride, beta  # beta: shared one-element list (aux-skip weight)

    def forward(self, x, weights):
        out = sum(w * op(x) for w, op in zip(weights, self.ops))
        if self.stride == 1 and self.beta[0] > 0:
            out = out + self.beta[0] * x
        return out


class SuperNet(nn.Module):
    def __init__(self, cfg: NetConfig, nodes: int = 3):
        super().__init__()
        self.cfg, self.nodes = cfg, nodes
        self.beta = [0.0]
        self.stem, self.cells, c_out = _build(
            cfg, nodes, lambda i, red: None, lambda c, stride: MixedOp(c, stride, self.beta)
        )
        self.classifier = nn.Linear(c_out, cfg.classes)
        edges = sum(i + 2 for i in range(nodes))
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(edges, len(OPS)))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(edges, len(OPS)))

    def arch_parameters(self):
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self):
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x):
        s0 = s1 = self.stem(x)
        wn, wr = F.softmax(self.alpha_normal, dim=-1), F.softmax(self.alpha_reduce, dim=-1)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, wr if cell.reduction else wn)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(s1, 1), 1))

    def genotype(self) -> Genotype:
        """Per node the two strongest incoming edges, each with its strongest op other than none."""

        def derive(alpha):
            w = F.softmax(alpha, dim=-1).detach().cpu().numpy()
            cell, start = [], 0
            for i in range(self.nodes):
                rows = w[start : start + i + 2]
                best = [(max(r[1:]), j, OPS[1 + int(np.argmax(r[1:]))]) for j, r in enumerate(rows)]
                top = sorted(best, reverse=True)[:2]
                cell.append(tuple((op, j) for _, j, op in sorted(top, key=lambda t: t[1])))
                start += i + 2
            return tuple(cell)

        return Genotype(derive(self.alpha_normal), derive(self.alpha_reduce))


@dataclass
class DartsResult:
    genotype: Genotype
    epochs: int
    steps: int
    stopped: str
    history: list[dict] = field(default_factory=list)  # per epoch: genotype, skips, val accuracy
    seconds: float = 0.0
    peak_memory_mb: float = 0.0
    subset: str = ""  # how the epochs were shrunk to fit the budget, if they were


def _batches(n: int, batch: int, rng):
    order = rng.permutation(n)
    for i in range(0, n - batch + 1, batch):
        yield order[i : i + batch]


def _unrolled_alpha_grad(net: SuperNet, xt, yt, xv, yv, xi: float, wd: float):
    """Second-order DARTS: grad of L_val(w - xi dL_train/dw, alpha) wrt alpha (finite-difference Hessian)."""
    weights, arch = net.weight_parameters(), net.arch_parameters()
    grads = torch.autograd.grad(F.cross_entropy(net(xt), yt), weights, allow_unused=True)
    backup = [w.detach().clone() for w in weights]
    with torch.no_grad():
        for w, g in zip(weights, grads):
            if g is not None:
                w.sub_(xi * (g + wd * w))
    val_loss = F.cross_entropy(net(xv), yv)
    dalpha = torch.autograd.grad(val_loss, arch, retain_graph=True)
    dw = torch.autograd.grad(val_loss, weights, allow_unused=True)
    dw = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, dw)]
    eps = 0.01 / (torch.sqrt(sum((g * g).sum() for g in dw)) + 1e-12)
    hessian = []
    for sign in (1.0, -2.0):
        with torch.no_grad():
            for w, b, g in zip(weights, backup, dw):
                w.copy_(b + (eps * g if sign > 0 else -eps * g))
        hessian.append(torch.autograd.grad(F.cross_entropy(net(xt), yt), arch))
    with torch.no_grad():
        for w, b in zip(weights, backup):
            w.copy_(b)
    return [da - xi * (hp - hm) / (2 * eps) for da, hp, hm in zip(dalpha, hessian[0], hessian[1])]


def darts_search(
    x: np.ndarray,
    y: np.ndarray,
    cfg: NetConfig,
    *,
    nodes: int = 3,
    budget_s: float = 600,
    epochs: int = 50,
    batch: int = 64,
    order: int = 1,
    guard: str = "earlystop",
    seed: int = 0,
    progress: bool = True,
    lr: float = 0.025,
    arch_lr: float = 3e-4,
    device: str = "cpu",
) -> DartsResult:
    """Search on (x, y): half trains w, half trains alpha (and measures the epoch's accuracy)."""
    from tensorfold.progress import bar as progress_bar
    from tensorfold.runtime.latency import peak_rss_mb

    if guard not in GUARDS:
        raise TensorfoldError(f"unknown collapse guard '{guard}' (choose from {', '.join(GUARDS)})")
    if order not in (1, 2):
        raise TensorfoldError(f"--order must be 1 or 2 (got {order})")
    start = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    half = len(x) // 2
    xt, yt, xv, yv = (
        torch.from_numpy(a).to(device)
        for a in (x[:half], y[:half].astype(np.int64), x[half:], y[half:].astype(np.int64))
    )
    net = SuperNet(cfg, nodes).to(device)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=lr, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=arch_lr, betas=(0.5, 0.999), weight_decay=1e-3)
    steps_per_epoch = half // batch
    if steps_per_epoch < 1:
        raise TensorfoldError(f"DARTS needs at least {2 * batch} training images (got {len(x)})")
    history, stopped, step, epoch, subset = [], "epochs done", 0, 0, ""
    previous = net.genotype()
    bar = progress_bar(total=epochs, desc="darts", unit="epoch", show=progress)
    for epoch in range(1, epochs + 1):
        if guard == "aux-skip":
            net.beta[0] = max(0.0, 1.0 - (epoch - 1) / max(1, epochs))
        t0 = time.perf_counter()
        net.train()
        for k, (ti, vi) in enumerate(zip(_batches(half, batch, rng), _batches(len(xv), batch, rng))):
            ti, vi = torch.from_numpy(ti).to(device), torch.from_numpy(vi).to(device)
            lr_now = 0.5 * lr * (1 + math.cos(math.pi * (epoch - 1 + k / steps_per_epoch) / epochs))
            for g in w_opt.param_groups:
                g["lr"] = lr_now
            a_opt.zero_grad()
            if order == 2:
                for a, g in zip(
                    net.arch_parameters(), _unrolled_alpha_grad(net, xt[ti], yt[ti], xv[vi], yv[vi], lr_now, 3e-4)
                ):
                    a.grad = g
            else:
                F.cross_entropy(net(xv[vi]), yv[vi]).backward(inputs=net.arch_parameters())
            a_opt.step()
            w_opt.zero_grad()
            loss = F.cross_entropy(net(xt[ti]), yt[ti])
            loss.backward(inputs=net.weight_parameters())
            nn.utils.clip_grad_norm_(net.weight_parameters(), 5.0)
            w_opt.step()
            step += 1
            elapsed = time.perf_counter() - start
            if epoch == 1 and k < 2 and k < steps_per_epoch - 1:
                continue
            if epoch == 1 and k == min(2, steps_per_epoch - 1):
                # measured on the first steps (a few seconds, far under a tenth of any budget that can
                # run): epochs shrink to a subset of the training images so MIN_EPOCHS fit the budget
                step_s = (time.perf_counter() - t0) / (k + 1)
                fit = int((budget_s - elapsed) / (MIN_EPOCHS * step_s))
                if fit < min(MIN_STEPS, steps_per_epoch):
                    bar.close()
                    raise DartsBudgetError(budget_s, MIN_EPOCHS * MIN_STEPS * step_s)
                if fit < steps_per_epoch:
                    steps_per_epoch = fit
                    subset = (
                        f"each epoch trains on {fit * batch} of the {half} weight-training images "
                        f"({step_s:.2f} s per step here) so {MIN_EPOCHS} epochs fit the budget"
                    )
            if elapsed > budget_s or k + 1 >= steps_per_epoch:
                break
        genotype = net.genotype()
        acc = accuracy(net, xv[:1000], yv[:1000], batch=250)
        history.append(
            {
                "epoch": epoch,
                "genotype": genotype.as_dict(),
                "skips_normal": genotype.count("skip_connect"),
                "parameter_free_normal": parameter_free(genotype),
                "val_accuracy": acc,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        bar.update(1)
        bar.set_postfix(acc=f"{acc:.3f}", skips=genotype.count("skip_connect"))
        why = collapse(genotype, epoch, previous) if guard == "earlystop" else None
        if why:
            stopped = f"collapse guard: {why} at epoch {epoch}; kept the genotype of epoch {epoch - 1}"
            genotype = previous
            break
        previous = genotype
        if time.perf_counter() - start > budget_s:
            stopped = f"budget reached in epoch {epoch}"
            break
    bar.close()
    peak = peak_rss_mb() + (torch.cuda.max_memory_allocated() / 2**20 if str(device).startswith("cuda") else 0)
    return DartsResult(genotype, epoch, step, stopped, history, time.perf_counter() - start, peak, subset)
