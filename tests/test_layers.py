"""The import graph: layers point down, no cycles, pure math and codecs stay free of model code.

Read from the source with `ast` (nothing is imported), so a rule broken anywhere in
compressor/ fails here with the offending import named.  CONTRIBUTING.md draws the same map.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "compressor"

# Top to bottom.  A module may import its own layer or any layer below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("compressor.cli", "compressor.__main__", "compressor.commands", "compressor.commands.*")),
    # The package exports the Python API (compressor.run, ...): it sits above what the API calls.
    ("api", ("compressor", "compressor.api")),
    (
        "run",
        (
            "compressor.pipeline",
            "compressor.zoo",
            "compressor.stages",
            "compressor.stages.*",
            "compressor.report",
            "compressor.options",
            "compressor.recipe",
        ),
    ),
    ("search", ("compressor.search", "compressor.search.*")),
    ("judge", ("compressor.measure",)),
    ("passes", ("compressor.passes", "compressor.passes.*")),
    (
        "model",
        (
            "compressor.graph",
            "compressor.node_order",
            "compressor.paths",
            "compressor.variants",
            "compressor.data",
            "compressor.evaluate",
            "compressor.session_arrays",
            "compressor.sequences",
            "compressor.inspect_model",
            "compressor.container",
            "compressor.container.*",
        ),
    ),
    (
        "math",
        (
            "compressor.version",
            "compressor.errors",
            "compressor.present",
            "compressor.kmeans",
            "compressor.kmeans_memo",
            "compressor.heap",
            "compressor.output_kinds",
            "compressor.decision_risk",
            "compressor.embedding_similarity",
            "compressor.quant_math",
            "compressor.ecq",
            "compressor.ecq_sorted",
            "compressor.lowrank_math",
            "compressor.codec",
            "compressor.codec.*",
            "compressor.container.format",
            "compressor.container.coders",
            "compressor.container.coders.*",
        ),
    ),
]
# Pure numpy / bytes: no ONNX, no ONNX Runtime (they are unit-tested without a model).
PURE = ("math",)
MODEL_LIBRARIES = ("onnx", "onnxruntime", "google.protobuf")
# Imported inside a function on purpose: optional extras that the core install may lack.
OPTIONAL = ("matplotlib", "torch", "dask", "distributed")
# Imported inside a function on purpose: ONNX Runtime takes a noticeable part of a second to
# load, and inspect/pack/unpack never run a model; scipy (half a second) only for the regions of
# a probability map (output_kinds.map_f1).
LAZY = ("onnxruntime", "scipy")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer_of(module: str) -> int:
    # The most specific pattern wins (compressor.container.format is math, compressor.container.* model).
    best, best_len = None, -1
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if fnmatch.fnmatchcase(module, pattern) and len(pattern) > best_len:
                best, best_len = index, len(pattern)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and to CONTRIBUTING.md's map)"
    return best


class _Imports(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool):
        self.module, self.is_package = module, is_package
        self.found: list[tuple[str, int, bool]] = []  # (imported module, line, inside a function)
        self.depth = 0

    def _visit_function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom):
        if node.level:
            base = self.module.split(".")
            if not self.is_package:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            # `from . import graph` imports the submodule compressor.graph; `from .x import f` imports x.
            candidate = f"{target}.{alias.name}"
            self.found.append((candidate if _is_module(candidate) else target, node.lineno, self.depth > 0))


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def _imports() -> dict[str, list[tuple[str, int, bool]]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        visitor = _Imports(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(), str(path)))
        graph[module] = visitor.found
    return graph


IMPORTS = _imports()


def _internal(name: str) -> bool:
    return name == "compressor" or name.startswith("compressor.")


def test_every_module_is_in_a_layer():
    for module in IMPORTS:
        _layer_of(module)


def test_layers_point_down():
    broken = []
    for module, found in IMPORTS.items():
        mine = _layer_of(module)
        for target, line, _ in found:
            if _internal(target) and _is_module(target) and _layer_of(target) < mine:
                broken.append(f"{module}:{line} ({LAYERS[mine][0]}) imports {target} ({LAYERS[_layer_of(target)][0]})")
    assert not broken, "imports that point up:\n" + "\n".join(broken)


def test_only_the_cli_imports_commands():
    broken = [
        f"{module}:{line} imports {target}"
        for module, found in IMPORTS.items()
        for target, line, _ in found
        if target.startswith("compressor.commands") and _layer_of(module) != 0
    ]
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("layer", PURE)
def test_math_and_codecs_never_touch_model_code(layer):
    index = [name for name, _ in LAYERS].index(layer)
    broken = [
        f"{module}:{line} imports {target}"
        for module, found in IMPORTS.items()
        if _layer_of(module) == index
        for target, line, _ in found
        if target.split(".")[0] in {m.split(".")[0] for m in MODEL_LIBRARIES} or target in MODEL_LIBRARIES
    ]
    assert not broken, "\n".join(broken)


def test_no_function_level_imports_of_project_modules():
    # An import placed inside a function is how a cycle hides; optional extras are the exception.
    broken = [
        f"{module}:{line} imports {target} inside a function"
        for module, found in IMPORTS.items()
        for target, line, inside in found
        if inside and _internal(target)
    ]
    assert not broken, "\n".join(broken)


def test_function_level_imports_are_only_optional_extras():
    broken = [
        f"{module}:{line} imports {target} inside a function"
        for module, found in IMPORTS.items()
        for target, line, inside in found
        if inside and not _internal(target) and target.split(".")[0] not in OPTIONAL + LAZY
    ]
    assert not broken, "\n".join(broken)


def test_no_import_cycles():
    edges = {
        module: sorted({t for t, _, _ in found if _internal(t) and t in IMPORTS and t != module})
        for module, found in IMPORTS.items()
    }
    # Tarjan's strongly connected components; any component of two or more modules is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_sees_a_planted_cycle_and_an_upward_import(tmp_path):
    # The rules above can fail: the same analysis on a tiny fake tree finds what is planted.
    (tmp_path / "a.py").write_text("from . import b\n")
    visitor = _Imports("compressor.codec.a", False)
    visitor.visit(ast.parse("from ..pipeline import run_pipeline\nimport onnx\ndef f():\n    from .. import graph\n"))
    targets = [(t, inside) for t, _, inside in visitor.found]
    assert ("compressor.pipeline", False) in targets
    assert ("onnx", False) in targets
    assert ("compressor.graph", True) in targets
    assert _layer_of("compressor.codec.a") > _layer_of("compressor.pipeline")
