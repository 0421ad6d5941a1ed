"""The DARTS search space (Liu et al. 2019), sized for small images on a CPU.

A network is a stem conv, then `layers` cells (reduction cells, stride 2 and twice the channels,
at 1/3 and 2/3 of the depth), global pooling and a linear classifier. A cell reads the outputs of
the two cells before it (s0, s1) and has `nodes` intermediate nodes; each node sums two ops
applied to two earlier states; the cell's output concatenates its intermediate nodes.

A genotype names, per cell type (normal, reduce), each node's two (op, input) pairs; inputs
count s0 = 0, s1 = 1, node k = k + 2. Genotype <-> JSON <-> torch module <-> ONNX.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tensorfold.errors import TensorfoldError

OPS = (
    "none",
    "skip_connect",
    "max_pool_3x3",
    "avg_pool_3x3",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "conv_3x3",
    "conv_5x5",
)
# what a discrete cell may use: "none" (zero) only exists inside the supernet's mixed ops
DISCRETE_OPS = OPS[1:]


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride, padding, dilation=1):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, bias=False),
            nn.BatchNorm2d(c_out, affine=True),
        )


class DilConv(nn.Sequential):
    def __init__(self, c_in, c_out, kernel, stride, padding, dilation):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=True),
        )


class SepConv(nn.Sequential):
    """Two depthwise-separable convs in a row, as in DARTS."""

    def __init__(self, c_in, c_out, kernel, stride, padding):
        super().__init__(DilConv(c_in, c_in, kernel, stride, padding, 1), DilConv(c_in, c_out, kernel, 1, padding, 1))


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x.mul(0.0) if self.stride == 1 else x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """A stride-2 'skip': two 1x1 convs on offset grids, concatenated (odd sizes padded first)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=True)

    def forward(self, x):
        x = self.relu(x)
        padded = nn.functional.pad(x, (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(padded[:, :, 1:, 1:])], dim=1))


def make_op(name: str, c: int, stride: int) -> nn.Module:
    if name == "none":
        return Zero(stride)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
    if name in ("max_pool_3x3", "avg_pool_3x3"):
        pool = (
            nn.MaxPool2d(3, stride, 1)
            if name == "max_pool_3x3"
            else nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        )
        return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False))
    k = int(name[-1])
    if name.startswith("sep_conv"):
        return SepConv(c, c, k, stride, k // 2)
    if name.startswith("dil_conv"):
        return DilConv(c, c, k, stride, k - 1, 2)
    if name.startswith("conv"):
        return ReLUConvBN(c, c, k, stride, k // 2)
    raise TensorfoldError(f"unknown op '{name}' (choose from {', '.join(OPS)})")


@dataclass(frozen=True)
class Genotype:
    normal: tuple[tuple[tuple[str, int], ...], ...]  # per node: ((op, input), (op, input))
    reduce: tuple[tuple[tuple[str, int], ...], ...]

    @property
    def nodes(self) -> int:
        return len(self.normal)

    def as_dict(self) -> dict:
        return {
            "normal": [[list(e) for e in node] for node in self.normal],
            "reduce": [[list(e) for e in node] for node in self.reduce],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    def count(self, op: str, cell: str = "normal") -> int:
        return sum(1 for node in getattr(self, cell) for o, _ in node if o == op)

    def __str__(self) -> str:
        def cell(c):
            return " | ".join(" + ".join(f"{o}({i})" for o, i in node) for node in c)

        return f"normal: {cell(self.normal)} ; reduce: {cell(self.reduce)}"


def genotype_from_dict(data, source: str = "genotype") -> Genotype:
    """Validate and build; every mistake is a one-line TensorfoldError naming `source`."""
    if not isinstance(data, dict) or set(data) != {"normal", "reduce"}:
        raise TensorfoldError(f"{source}: a genotype has exactly the keys 'normal' and 'reduce'")
    cells = {}
    for kind in ("normal", "reduce"):
        nodes = data[kind]
        if not isinstance(nodes, list) or not nodes:
            raise TensorfoldError(f"{source}: '{kind}' must be a non-empty list of nodes")
        out = []
        for k, node in enumerate(nodes):
            if not isinstance(node, list) or len(node) != 2:
                raise TensorfoldError(f"{source}: {kind} node {k} needs two [op, input] pairs")
            pairs = []
            for edge in node:
                if not isinstance(edge, (list, tuple)) or len(edge) != 2:
                    raise TensorfoldError(f"{source}: {kind} node {k}: an edge is [op, input], got {edge!r}")
                op, src = edge
                if op not in DISCRETE_OPS:
                    raise TensorfoldError(
                        f"{source}: unknown op '{op}' in {kind} node {k} (choose from {', '.join(DISCRETE_OPS)})"
                    )
                if not isinstance(src, int) or not 0 <= src < k + 2:
                    raise TensorfoldError(f"{source}: {kind} node {k} reads input {src!r}; it may read 0..{k + 1}")
                pairs.append((op, src))
            out.append(tuple(pairs))
        cells[kind] = tuple(out)
    if len(cells["normal"]) != len(cells["reduce"]):
        raise TensorfoldError(f"{source}: normal and reduce cells need the same number of nodes")
    return Genotype(cells["normal"], cells["reduce"])


def load_genotype(path: str | Path) -> Genotype:
    path = Path(path)
    if not path.is_file():
        raise TensorfoldError(f"genotype file {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise TensorfoldError(f"genotype file {path} is not JSON: {exc}") from None
    return genotype_from_dict(data.get("genotype", data) if isinstance(data, dict) else data, str(path))


@dataclass(frozen=True)
class NetConfig:
    """Size of the network a genotype is stacked into."""

    channels: int = 8  # C of the first cells; doubled at each reduction
    layers: int = 5  # cells
    in_channels: int = 1
    classes: int = 10
    stem_stride: int = 2  # 28x28 inputs: cells work at 14, 7, 4 (a quarter of the cost at full size)

    def reductions(self) -> set[int]:
        return {self.layers // 3, 2 * self.layers // 3} if self.layers >= 3 else {self.layers - 1}


class Cell(nn.Module):
    """A discrete cell (a genotype's) or, with `mixed`, the supernet's cell of mixed ops."""

    def __init__(
        self, genotype_cell, nodes: int, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool, mixed=None
    ):
        super().__init__()
        self.reduction, self.nodes = reduction, nodes
        self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0)
        self.mixed = mixed is not None
        if self.mixed:
            # every earlier state feeds every node through a mixed op
            self.edges = nn.ModuleList(
                mixed(c, 2 if reduction and j < 2 else 1) for i in range(nodes) for j in range(i + 2)
            )
        else:
            self.inputs = [src for node in genotype_cell for _, src in node]
            self.edges = nn.ModuleList(
                make_op(op, c, 2 if reduction and src < 2 else 1) for node in genotype_cell for op, src in node
            )

    def forward(self, s0, s1, weights=None):
        states = [self.pre0(s0), self.pre1(s1)]
        if self.mixed:
            offset = 0
            for _ in range(self.nodes):
                states.append(sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states)))
                offset += len(states) - 1
        else:
            for i in range(self.nodes):
                a, b = self.inputs[2 * i], self.inputs[2 * i + 1]
                states.append(self.edges[2 * i](states[a]) + self.edges[2 * i + 1](states[b]))
        return torch.cat(states[2:], dim=1)


class Network(nn.Module):
    """The discrete network of a genotype."""

    def __init__(self, genotype: Genotype, cfg: NetConfig = NetConfig()):
        super().__init__()
        self.genotype, self.cfg = genotype, cfg
        self.stem, self.cells, c_out = _build(
            cfg, genotype.nodes, lambda i, red: genotype.reduce if red else genotype.normal, None
        )
        self.classifier = nn.Linear(c_out, cfg.classes)

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(s1, 1), 1))


def _build(cfg: NetConfig, nodes: int, genotype_cell, mixed):
    c_stem = 3 * cfg.channels
    stem = nn.Sequential(
        nn.Conv2d(cfg.in_channels, c_stem, 3, stride=cfg.stem_stride, padding=1, bias=False), nn.BatchNorm2d(c_stem)
    )
    c_pp, c_p, c = c_stem, c_stem, cfg.channels
    cells, reduction_prev = nn.ModuleList(), False
    for i in range(cfg.layers):
        reduction = i in cfg.reductions()
        if reduction:
            c *= 2
        cells.append(Cell(genotype_cell(i, reduction), nodes, c_pp, c_p, c, reduction, reduction_prev, mixed))
        reduction_prev = reduction
        c_pp, c_p = c_p, nodes * c
    return stem, cells, c_p


def to_onnx(net: nn.Module, image: tuple[int, int, int] = (1, 28, 28)):
    """The network (moved to the CPU, eval mode) as an in-memory ONNX model with a dynamic batch."""
    import io

    import onnx

    from tensorfold.export import export_onnx

    buf = io.BytesIO()
    export_onnx(net.cpu().eval(), torch.zeros(1, *image), buf)
    return onnx.load_from_string(buf.getvalue())


def export_network(net: nn.Module, path: str | Path, image: tuple[int, int, int] = (1, 28, 28)) -> Path:
    from tensorfold.graph.io import save_model

    return save_model(to_onnx(net, image), path)


def uniform_genotype(op: str, nodes: int = 3) -> Genotype:
    """Every edge `op`, in both cells."""
    cell = tuple((((op, 0), (op, 1)),) * nodes)
    return Genotype(cell, cell)


def heaviest_genotype(nodes: int = 3) -> Genotype:
    """Every edge a 5x5 conv: the network of the space with the most FLOPs, for latency bounds."""
    return uniform_genotype("conv_5x5", nodes)


def random_genotype(rng, nodes: int = 3) -> Genotype:
    def cell():
        return tuple(
            tuple((DISCRETE_OPS[rng.integers(len(DISCRETE_OPS))], int(rng.integers(k + 2))) for _ in range(2))
            for k in range(nodes)
        )

    return Genotype(cell(), cell())


def mutate(genotype: Genotype, rng) -> Genotype:
    """Aging evolution's mutation (Real et al. 2019): one edge of one cell gets a new op or a new input."""
    cells = {"normal": [list(n) for n in genotype.normal], "reduce": [list(n) for n in genotype.reduce]}
    kind = "normal" if rng.random() < 0.5 else "reduce"
    k = int(rng.integers(genotype.nodes))
    e = int(rng.integers(2))
    op, src = cells[kind][k][e]
    if rng.random() < 0.5:
        choices = [o for o in DISCRETE_OPS if o != op]
        op = choices[rng.integers(len(choices))]
    else:  # node k reads states 0 .. k+1: always another
        choices = [s for s in range(k + 2) if s != src]
        src = int(choices[rng.integers(len(choices))])
    cells[kind][k][e] = (op, src)
    return Genotype(tuple(tuple(n) for n in cells["normal"]), tuple(tuple(n) for n in cells["reduce"]))
