"""A rank configuration file: which method and ranks each layer gets. A rank search writes one per
Pareto point; `tensorfold optimize MODEL -o OUT --config FILE` replays it on the model (or a
retrained copy with the same layers). It records each layer's op and weight shape, so a config
meant for another model is refused instead of half-applied."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tensorfold import __version__
from tensorfold.errors import TensorfoldError
from tensorfold.outputs import write_text_atomic
from tensorfold.passes.base import Plan
from tensorfold.passes.layers import Layer
from tensorfold.passes.planned import check_choice
from tensorfold.search.space import decode_plan, encode_plan

KIND = "tensorfold-ranks"


def layer_signature(layer: Layer) -> str:
    shape = "x".join(str(d) for d in layer.weight.shape)
    return f"{layer.node.op_type} {shape}" + (f" g{layer.groups}" if layer.groups > 1 else "")


def write_config(path: Path, plan: Plan, layers: dict[str, Layer], *, model: str, values: dict, source: dict) -> Path:
    doc = {
        "kind": KIND,
        "tensorfold": __version__,
        "model": {"file": Path(model).name, "layers": {name: layer_signature(layers[name]) for name in plan}},
        "objectives": values,
        "source": source,
        "layers": encode_plan(plan),
    }
    header = (
        f"# tensorfold rank configuration; replay with:\n"
        f"#   tensorfold optimize {Path(model).name} -o OUT.onnx --config {Path(path).name}\n"
    )
    return write_text_atomic(path, header + yaml.safe_dump(doc, sort_keys=False))


def read_config(path: str | os.PathLike, layers: dict[str, Layer]) -> Plan:
    """The plan in `path`, checked against the model's layers (by name, op and weight shape)."""
    path = Path(path)
    if not path.is_file():
        raise TensorfoldError(f"--config {path}: no such file")
    try:
        doc = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise TensorfoldError(f"--config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise TensorfoldError(f"--config {path} is not a tensorfold rank configuration (kind: {KIND})")
    plan = decode_plan(doc.get("layers"), f"--config {path}")
    recorded = (doc.get("model") or {}).get("layers") or {}
    for name in plan:
        if name not in layers:
            raise TensorfoldError(
                f"--config {path} was made for another model ({(doc.get('model') or {}).get('file')}): "
                f"this model has no factorizable layer '{name}'"
            )
        here = layer_signature(layers[name])
        if recorded.get(name) not in (None, here):
            raise TensorfoldError(
                f"--config {path} was made for another model: layer '{name}' is {here} here, "
                f"{recorded[name]} in the config"
            )
        check_choice(layers[name], plan[name], f"--config {path}")
    return plan
