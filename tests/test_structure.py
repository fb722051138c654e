"""The library's shape, read from its source with `ast`: no import cycle between axw's modules (counting the
imports inside functions and under TYPE_CHECKING), no function over 80 lines, and no use of axw's private
names from the app, the benchmarks or the scripts."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AXW = ROOT / "axw"
MAX_LINES = 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(AXW.rglob("*.py"))}


def imported(name: str, path: Path, node: ast.AST, modules: dict) -> list[str]:
    """The modules (of `modules`: axw's, say) an import statement of module `name` loads by name (the parent
    packages Python also runs are not counted: every module would otherwise depend on `axw/__init__.py`)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    if base not in modules:
        return []
    # `from . import x` loads the submodule x when there is one, else a name of the package
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
    return subs + ([base] if len(subs) < len(node.names) else [])


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Which of `modules` (by name; axw's by default) each of them imports."""
    modules = library() if modules is None else modules
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = {m for node in ast.walk(tree) for m in imported(name, path, node, modules) if m != name}
    return graph


def reach(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` loads, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_reads_what_the_source_says():
    graph = import_graph()
    assert "axw.runtime" in graph["axw.sampling"]
    assert "axw.beam_search" in graph["axw.generation"]
    assert "axw.families" in graph["axw.convert"] and "axw.families.gpt2" in graph["axw.convert"]
    # an import inside a function counts
    assert "axw.wrapper" in graph["axw.train_cli"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_in_axw():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_strategies_share_a_runtime_that_imports_none_of_them():
    graph = import_graph()
    strategies = {"axw.sampling", "axw.beam_search", "axw.contrastive_search", "axw.speculative"}
    assert not reach(graph, "axw.runtime") & (strategies | {"axw.generation", "axw.wrapper"})
    for strategy in strategies:
        assert "axw.runtime" in graph[strategy] and "axw.generation" not in reach(graph, strategy)


def test_generation_still_offers_the_names_it_did_and_picks_among_the_runtimes_strategies():
    from axw import generation, runtime
    from axw.generation import (  # noqa: F401
        INT_DTYPES, ModelRunner, Step, as_net, decode_one_token, prefill, prepare_prompts, sample, window)
    from axw.speculative import NgramDatastore, NgramIndex, SpeculativeStats  # noqa: F401

    assert issubclass(generation.Decoding, runtime.Run) and generation.Step is runtime.Step
    assert set(generation.STEPS) == set(runtime.STRATEGIES)


def test_no_function_in_axw_over_80_lines():
    long = []
    for name, path in library().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{name}.{node.name} ({lines} lines, line {node.lineno})")
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def test_no_axw_module_imports_a_private_name_of_another():
    found = [f"{name}: from {'.' * node.level}{node.module or ''} import {a.name}"
             for name, path in library().items() for node in ast.walk(ast.parse(path.read_text(), str(path)))
             if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("axw"))
             for a in node.names if private(a.name)]
    assert not found, f"private names imported across axw's modules: {found}"


# --- the app, the benchmarks and the scripts use axw's public names only ---


def private(name: str) -> bool:
    return len(name) > 1 and name.startswith("_") and not name.startswith("__")


def axw_private_names() -> set[str]:
    """Every single-underscore name axw defines: functions, methods, classes, attributes set on self or at the
    top of a module or class."""
    names = set()
    for path in library().values():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if private(n)}


def app_files() -> list[Path]:
    return [ROOT / "app.py", *sorted((ROOT / "playground").rglob("*.py")), *sorted((ROOT / "benchmarks").rglob("*.py")),
            *sorted((ROOT / "scripts").rglob("*.py"))]


def private_uses(source: str, names: set[str]) -> list[str]:
    """`from axw... import _x`, and `obj._x` for a private name `_x` of axw on anything but self or cls."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "axw":
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names if private(a.name)]
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] == "axw" and any(map(private, a.name.split(".")))]
        elif isinstance(node, ast.Attribute) and node.attr in names and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_the_private_name_scan_finds_what_it_should():
    names = {"_decoding", "_entropy"}
    source = ("from axw.filters import _entropy, top_k\nimport axw._x\nrun = model._decoding(1)\n"
              "self._decoding = 2\nx = torch.ops._decoding_op\ny = model.generate\n")
    assert private_uses(source, names) == ["line 1: from axw.filters import _entropy", "line 2: import axw._x",
                                           "line 3: model._decoding"]
    assert {"_decoding", "_given_cache", "_uncached", "_pending"} <= axw_private_names()
    assert not {"_", "__init__", "generate"} & axw_private_names()


def test_the_app_benchmarks_and_scripts_use_no_private_name_of_axw():
    names = axw_private_names()
    uses = {str(p.relative_to(ROOT)): found for p in app_files() if (found := private_uses(p.read_text(), names))}
    assert not uses, f"private axw names used outside axw: {uses}"
