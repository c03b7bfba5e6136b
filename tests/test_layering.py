"""The package's layers (DESIGN.md, "The Python package as it grows"): imports only run downward,
no module imports itself through others, a trainer never imports another trainer, and the
runtime side never imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "tinyfast"

# Bottom up; a module may import from its own layer or any lower one (between trainers of the
# same layer, see test_a_trainer_never_imports_another_trainer).
LAYERS: list[set[str]] = [
    {"errors", "_io", "_native"},
    {"bundle", "runtime", ""},  # "" is tinyfast/__init__.py: Runtime and the version only
    {"data", "metrics"},
    {"exits"},  # the speed rule, FLOPs, speed curves (numpy only)
    {"kernels"},
    {"models"},
    {"train"},
    {"distill", "finetune", "selfdistill", "augment"},  # trainers: never one importing another
    {"export"},
    {"bench"},  # the peer-comparison harness: exports bundles, runs every engine
    {"report"},  # report.md and plots from a pipeline's output directory (no torch)
    {"pipeline"},
    {"cli", "__main__"},
]
TRAINERS = {"distill", "finetune", "selfdistill", "augment"}
# Compiled modules (no .py file to scan).
EXTENSIONS = {"tinyfast._native"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def top(module: str) -> str:
    """The first-level part of ``tinyfast.x.y`` ("" for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every tinyfast module ``path`` imports, at any depth of its code (lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "tinyfast")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "tinyfast":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                # ``from tinyfast.train import distributed`` imports the submodule itself.
                found.add(sub if sub in modules or sub in EXTENSIONS else node.module)
    return found


def layer_of(module: str) -> int:
    for index, names in enumerate(LAYERS):
        if top(module) in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports(path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer():
    for module in all_modules():
        layer_of(module)


def test_imports_only_run_downward():
    upward = []
    for module, targets in graph().items():
        for target in targets:
            if layer_of(target) > layer_of(module):
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_a_trainer_never_imports_another_trainer():
    crossing = [f"{m} -> {t}" for m, ts in graph().items() for t in ts
                if top(m) in TRAINERS and top(t) in TRAINERS and top(m) != top(t)]
    assert not crossing, crossing


def test_no_import_circles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


@pytest.mark.parametrize("modules", [
    "tinyfast", "tinyfast.runtime", "tinyfast.bundle", "tinyfast.data", "tinyfast.export",
    "tinyfast.cli", "tinyfast._io", "tinyfast.metrics", "tinyfast.exits", "tinyfast.report",
])
def test_runtime_side_imports_no_torch(modules):
    code = (f"import sys, {modules}; heavy = ('torch', 'transformers', 'safetensors', 'tqdm'); "
            "bad = sorted(m for m in heavy if m in sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
