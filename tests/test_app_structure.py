"""The app's shape, read from its source with `ast`: no import cycle in playground/ and app.py (counting the imports
inside functions), a core (`playground.service`) and gradio-free modules that import no view, no function over 60
lines but the layout functions, no private attribute of gradio (or of anything else) reached from outside; and the
page reads what a click sends through gradio's public route."""

import ast
from pathlib import Path

import pytest
from test_structure import ROOT, find_cycle, import_graph, module_name, reach

MAX_LINES = 60
CORE = "playground.service"
VIEWS = "playground.views"


def app_modules() -> dict[str, Path]:
    return {module_name(p): p for p in [ROOT / "app.py", *sorted((ROOT / "playground").rglob("*.py"))]}


def is_view(name: str) -> bool:
    return name == VIEWS or name.startswith(VIEWS + ".")


def imports_gradio(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "gradio" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "gradio":
            return True
    return False


def test_the_graph_sees_the_app_and_the_imports_inside_functions(tmp_path):
    graph = import_graph(app_modules())
    assert {"app", CORE, "playground.views.generate", "playground.numbers.beam_tree"} <= set(graph)
    assert {CORE, "playground.views.generate"} <= graph["app"]
    assert "playground.numbers.beam_tree" in graph["playground.panels"]
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "core.py").write_text("import os\n\ndef handler():\n    from .view import place\n")
    (tmp_path / "view.py").write_text("from . import core\n")
    fake = {"pkg": tmp_path / "__init__.py", "pkg.core": tmp_path / "core.py", "pkg.view": tmp_path / "view.py"}
    graph = import_graph(fake)
    assert graph == {"pkg": set(), "pkg.core": {"pkg.view"}, "pkg.view": {"pkg.core"}}
    assert find_cycle(graph) == ["pkg.core", "pkg.view", "pkg.core"]


def test_no_import_cycle_in_the_playground():
    cycle = find_cycle(import_graph(app_modules()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_core_and_the_gradio_free_modules_import_no_view():
    graph = import_graph(app_modules())
    assert not {m for m in reach(graph, CORE) if is_view(m)}, "the core reaches a view"
    outside = [m for m in graph if m.startswith("playground") and not is_view(m)]
    found = {m: sorted(v for v in graph[m] if is_view(v)) for m in outside}
    assert not {m: v for m, v in found.items() if v}, "modules outside playground/views import a view"
    # gradio only in the views and the core: `import playground` (its package and what it imports) is free of it
    modules = app_modules()
    gradio_free = [m for m in outside if m != CORE]
    assert not [m for m in gradio_free if imports_gradio(modules[m])]
    assert not [m for m in gradio_free if CORE in reach(graph, m)]
    assert imports_gradio(modules[CORE]) and imports_gradio(modules["playground.views.generate"])


def layout_function(module: str, node: ast.AST) -> bool:
    """A view's `build` (and the page's, in app.py): it lays out components, one after another."""
    return node.name == "build" and (module == "app" or is_view(module))


def test_no_function_in_the_app_over_60_lines_but_the_layout_functions():
    long = []
    for name, path in app_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not layout_function(name, node):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{name}.{node.name} ({lines} lines, line {node.lineno})")
    assert not long, f"functions over {MAX_LINES} lines: {long}"


# torch offers no public query for oneDNN's bf16 support; its op is registered under this name
ALLOWED = {"torch.ops.mkldnn._is_mkldnn_bf16_supported"}


def private_reaches(source: str) -> list[str]:
    """`obj._x` on anything but self or cls, `getattr(obj, "_x")`, and `from module import _x`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__") and \
                not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) and \
                ast.unparse(node) not in ALLOWED:
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and \
                str(node.args[1].value).startswith("_") and not str(node.args[1].value).startswith("__"):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_the_private_reach_scan_finds_what_it_should():
    source = ("data = getattr(evt, '_data', None)\nx = evt._data\nself._cache = 1\nfrom .render import _bar\n"
              "y = cls._x\nz = obj.__class__\n")
    assert sorted(private_reaches(source)) == ["line 1: getattr(evt, '_data', None)", "line 2: evt._data",
                                               "line 4: import _bar"]


def test_the_app_reaches_no_private_attribute_of_gradio_or_anything_else():
    uses = {name: found for name, path in app_modules().items() if (found := private_reaches(path.read_text()))}
    assert not uses, f"private names reached: {uses}"


def test_a_click_sends_its_data_through_gradios_public_route():
    """Gradio builds a handler's `Triggered` parameter from the event's data (what js_on_load passed to trigger),
    as it builds its own gr.SelectData; an event sent with no data reads as {}. (Gradio reads the annotation; this
    module leaves annotations evaluated, so the local class is seen.)"""
    gr = pytest.importorskip("gradio")
    from gradio.helpers import special_args

    from playground.views import Triggered

    def handler(tree, evt: Triggered, request: gr.Request = None):
        return evt

    for sent, seen in (({"step": 3, "token": 7}, {"step": 3, "token": 7}), (None, {}), ([1, 2], {})):
        values, *_ = special_args(handler, ["tree"], event_data=gr.EventData(None, sent))
        assert values[0] == "tree" and isinstance(values[1], Triggered) and values[1].data == seen
