"""The architecture as a test: every import points down the layers, and no module imports itself
back through others. Function-level (lazy) imports count: they are dependencies all the same."""

from __future__ import annotations

import ast
from pathlib import Path

import tensorfold

ROOT = Path(tensorfold.__file__).parent

# bottom to top; a unit may import only units of a lower rank (or itself)
LAYERS = [
    ("errors", "log", "paths", "progress"),  # what every layer may use
    ("limits", "signals"),  # what the machine can do; signals seen inside native calls
    ("outputs",),  # the one place files are written
    ("decompose",),  # numpy math: factorizations and rank selection
    ("onnxrt",),  # protobuf's 2 GiB cap, onnxruntime sessions, inputs, batching
    ("graph",),  # ONNX graphs: load/save, normalize, shapes, stats, verification
    ("runtime",),  # latency: measured on a provider, predicted for a device
    ("passes",),  # layer discovery, the factorization passes, chain emission
    ("planning",),  # ranks chosen by measured latency (latency tables, hardware-aware)
    ("quantize",),  # int8 with onnxruntime: formats, calibration, mixed precision, fusion
    ("calibration",),  # the user's samples: statistics, sensitivity, budget search, deploy search
    ("datasets", "export"),  # data sets for training and evaluation; torch -> ONNX export
    ("recovery",),  # ONNX -> torch, distillation, fine-tuning
    ("search",),  # rank search and architecture search
    ("report",),
    ("optimize",),  # optimize as typed stages (load, prepare, build, verify, deploy, report, save)
    ("api",),
    ("pipeline", "cli_errors", "demo"),
    ("bench",),  # the benchmark suite: an application on top
    ("cli",),
    ("__main__",),
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, type_only: bool = True) -> set[str]:
    """Every tensorfold module `path` imports, at any depth of the file (with type_only=False, not
    the imports under `if TYPE_CHECKING:`, which never run: annotations of one layer's modules may
    name each other's classes without an import cycle at run time)."""
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    if not type_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tensorfold")}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("tensorfold")
            and node.level == 0
        ):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(
                    sub
                    if (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                    or (ROOT.parent / sub.replace(".", "/")).is_dir()
                    else node.module
                )
    return found


def _graph(type_only: bool = True) -> dict[str, set[str]]:
    return {_module_name(p): _imports(p, type_only) for p in ROOT.rglob("*.py")}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _graph()} - {"__init__"}
    assert units <= set(RANK), f"modules outside LAYERS: {sorted(units - set(RANK))}"


def test_imports_point_down():
    wrong = []
    for module, targets in _graph().items():
        source = _unit(module)
        if source == "__init__":
            continue
        for target in targets:
            unit = _unit(target)
            if unit not in ("__init__", source) and RANK[unit] >= RANK[source]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports from a lower layer to a higher one (or across one layer):\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph(type_only=False)
    graph = {m: {t for t in ts if t in graph and t != m and not m.startswith(t + ".")} for m, ts in graph.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"
