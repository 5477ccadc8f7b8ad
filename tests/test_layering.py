"""The package's layers: a module imports only from its own layer or the layers below it, and no two
modules import each other, directly or round a longer loop.

Layers, top to bottom (docs/architecture.md says what each holds):

    fresnet     the public API (``fresnet/__init__.py``, lazy re-exports) and ``python -m fresnet``
    cli         the ``fresnet ...`` command line
    demo        ``fresnet demo``: the whole package end to end
    train       margin losses, Partial FC, DDP, the training loop
    eval        verification protocol, ROC, embeddings, the any-format model loader
    interop     MXNet, arcface_torch, safetensors and ONNX files
    inference   the fast path: BatchNorm folding, mixed precision, optimize_for_inference
    inspection  summary and viz
    network     the network definition: config, presets, layers, units, heads, model, initialization
    memory      activation memory of a training step: measured, and the checkpointing plan
    data        RecordIO, verification .bin packs, image folders, synthetic identities
    base        errors, ioutil, lazy_exports, limits, progress, timing, validate

Every ``fresnet...`` import counts, function-local ones included, and so does a string naming a
fresnet module (the lazy ``_EXPORTS`` tables and the CLI's command table import it at run time).
Inside the package nothing imports the top-level ``fresnet`` for a public name: those are
re-exports of higher layers, so code imports the module that defines the name. The one exception is
``__version__``, a constant of ``fresnet/__init__.py`` itself.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fresnet"

LAYERS = (
    ("fresnet", ("fresnet", "fresnet.__main__")),
    ("cli", ("fresnet.cli",)),
    ("service", ("fresnet.service",)),
    ("demo", ("fresnet.demo",)),
    ("gallery", ("fresnet.gallery",)),
    ("train", ("fresnet.train",)),
    ("eval", ("fresnet.eval",)),
    ("faces", ("fresnet.faces",)),
    ("interop", ("fresnet.interop",)),
    ("inference", ("fresnet.inference",)),
    ("inspection", ("fresnet.inspection",)),
    ("network", ("fresnet.network",)),
    ("memory", ("fresnet.memory",)),
    ("data", ("fresnet.data",)),
    ("base", ("fresnet.errors", "fresnet.ioutil", "fresnet.lazy_exports", "fresnet.limits", "fresnet.progress",
              "fresnet.timing", "fresnet.validate")),
)
ROOT_OWN_NAMES = {"__version__"}  # defined in fresnet/__init__.py itself, not re-exported from above


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module
    path: Path
    line: int

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(SRC.parent)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index into LAYERS (0 is the top) of the longest prefix that owns ``module``."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                # the root package owns only itself, not every fresnet.* module
                if prefix == "fresnet" and module != "fresnet":
                    continue
                best, best_len = index, len(prefix)
    if best is None:
        raise LookupError(module)
    return best


def imports_of(source: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    found: list[Import] = []

    def add(target: str, node: ast.AST) -> None:
        found.append(Import(source, target, path, node.lineno))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "fresnet" or alias.name.startswith("fresnet."):
                    add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if not (base == "fresnet" or base.startswith("fresnet.")):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    add(submodule, node)
                elif not (base == "fresnet" and alias.name in ROOT_OWN_NAMES):
                    add(base, node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value \
                and node.value in modules:
            add(node.value, node)  # a module named for importlib (lazy exports, the CLI's commands)
    return [imp for imp in found if imp.target != source]


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    modules = all_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def test_every_module_has_a_layer():
    unplaced = []
    for name, path in all_modules().items():
        try:
            layer_of(name)
        except LookupError:
            unplaced.append(str(path.relative_to(SRC.parent)))
    assert not unplaced, f"modules outside every layer (add them to LAYERS in {__file__}): {unplaced}"


def test_every_import_points_down(graph):
    modules = all_modules()
    unknown = [f"{imp.where}: imports {imp.target}, which does not exist" for imp in graph
               if imp.target not in modules]
    assert not unknown, "\n".join(unknown)
    upward = [
        f"{imp.where}: {imp.source} ({LAYERS[layer_of(imp.source)][0]}) imports {imp.target} "
        f"({LAYERS[layer_of(imp.target)][0]}, a higher layer)"
        for imp in graph
        if layer_of(imp.target) < layer_of(imp.source)
    ]
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycles(graph):
    edges: dict[str, dict[str, Import]] = {}
    for imp in graph:
        edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
    cycles = [component for component in strongly_connected(edges) if len(component) > 1]
    report = []
    for component in cycles:
        members = set(component)
        report.append("cycle between " + ", ".join(sorted(members)) + ":")
        report.extend(f"  {imp.where}: {imp.source} imports {imp.target}"
                      for source in sorted(members) for target, imp in sorted(edges.get(source, {}).items())
                      if target in members)
    assert not cycles, "\n".join(report)


def strongly_connected(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    nodes = sorted(set(edges) | {t for targets in edges.values() for t in targets})
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, {}))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
    return components


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path):
    """The checks themselves: an upward import and a two-module cycle are both found."""
    modules = {"fresnet.network.model": tmp_path / "model.py", "fresnet.train.loop": tmp_path / "loop.py",
               "fresnet.errors": tmp_path / "errors.py"}
    modules["fresnet.network.model"].write_text("def f():\n    from fresnet.train.loop import train\n")
    modules["fresnet.train.loop"].write_text("from fresnet.network import model\n")
    modules["fresnet.errors"].write_text("")
    found = [imp for name, path in modules.items() for imp in _sorted_imports(name, path, modules)]
    assert [(i.source, i.target, i.line) for i in found] == [
        ("fresnet.network.model", "fresnet.train.loop", 2), ("fresnet.train.loop", "fresnet.network.model", 1)]
    assert layer_of("fresnet.train.loop") < layer_of("fresnet.network.model")  # train sits above network
    edges: dict = {}
    for imp in found:
        edges.setdefault(imp.source, {})[imp.target] = imp
    assert sorted(map(sorted, strongly_connected(edges))) == [["fresnet.network.model", "fresnet.train.loop"]]
    # the top-level package: a public name is a re-export from above, __version__ is its own
    root = tmp_path / "cli.py"
    root.write_text("from fresnet import __version__\nfrom fresnet import create_model\nimport fresnet\n")
    targets = [(i.target, i.line) for i in _sorted_imports("fresnet.cli.x", root, {"fresnet": root})]
    assert targets == [("fresnet", 2), ("fresnet", 3)]



def _sorted_imports(source: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    return sorted(imports_of(source, path, modules), key=lambda imp: imp.line)
