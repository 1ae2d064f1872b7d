"""The import graph of both packages, read from the source (every import, lazy ones included).

docs/ARCHITECTURE.md states the rules these tests hold: no import circle; no import of another
package's private module; softmask_builder never imports dsnet_trainer; inside softmask_builder,
folders import only folders below them in :data:`BUILDER_LAYERS`.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("softmask_builder", "dsnet_trainer")

#: softmask_builder's folders, top to bottom; "base" is errors.py and exitcodes.py.
BUILDER_LAYERS = ("cli", "export", "dataset", "reports", "phantom", "sources", "formats", "labelling", "core", "base")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of both packages it imports (anywhere in its body)."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = name.split(".") if is_pkg else name.split(".")[:-1]
                    here = here[:len(here) - (node.level - 1)]
                    base = ".".join(here + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    graph[name].add(t)
    for name in mods:
        graph.setdefault(name, set())
    return dict(graph)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "softmask_builder" or len(parts) == 1:
        return None  # the package's face (__init__) may name anything it re-exports
    if parts[1] in ("errors", "exitcodes"):
        return "base"
    return parts[1] if parts[1] in BUILDER_LAYERS else "unplaced:" + parts[1]


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_the_graph_is_read(graph):
    """Guards the reader itself: known arrows are found (a broken reader would pass everything)."""
    assert "softmask_builder.labelling.matting" in graph["softmask_builder.labelling.pipeline"]
    assert "softmask_builder.formats.shards" in graph["dsnet_trainer.data"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle(graph):
    assert circles(graph) == []


def test_no_private_module_of_another_package(graph):
    bad = [(a, b) for a, bs in graph.items() for b in bs
           if a.split(".")[0] != b.split(".")[0] and any(p.startswith("_") for p in b.split(".")[1:])]
    assert bad == []


def test_the_builder_never_imports_the_trainer(graph):
    assert [(a, b) for a, bs in graph.items() for b in bs
            if a.startswith("softmask_builder") and b.startswith("dsnet_trainer")] == []


def test_every_builder_module_is_in_a_layer(graph):
    assert [m for m in graph if (_layer(m) or "").startswith("unplaced")] == []


def test_builder_folders_import_only_downwards(graph):
    order = {name: i for i, name in enumerate(BUILDER_LAYERS)}
    up = [(a, b) for a, bs in graph.items() for b in bs
          if _layer(a) and _layer(b) and _layer(a) != _layer(b) and order[_layer(b)] < order[_layer(a)]]
    assert up == []
