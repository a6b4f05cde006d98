"""The package has no import cycle.

The graph counts every `sdpo_kit` import, at module level AND inside functions (a function-level
import hides a cycle from Python's loader, not from the reader), with `from sdpo_kit.x import y`
pointing at module `sdpo_kit.x.y` when `y` is a submodule and at `sdpo_kit.x` otherwise.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sdpo_kit"


def module_name(path: Path, root: Path) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in its body)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {m: set() for m in files}

    def known(name: str) -> str | None:  # `a.b.c` -> the longest prefix that is one of our modules
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y / from .. import y
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                found = known(target) if target.split(".")[0] == root.name else None
                if found and found != module:
                    graph[module].add(found)
    return graph


def components(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of two or more modules (each holds at least one cycle)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """The shortest way from the component's first module back to itself (a -> b -> ... -> a)."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        nxt = sorted(graph[path[-1]] & component)
        if start in nxt:
            return [*path, start]
        for w in nxt:
            if w not in seen:
                seen.add(w)
                paths.append([*path, w])
    raise AssertionError(f"{component} is not strongly connected")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One concrete cycle per strongly connected component."""
    return sorted(cycle_in(graph, c) for c in components(graph))


def describe(found: list[list[str]]) -> str:
    return "; ".join(" -> ".join(c) for c in found)


def test_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, f"import cycle(s): {describe(found)}"


JOBS = ("sdpo_kit.curate", "sdpo_kit.train", "sdpo_kit.report")


def job_of(module: str) -> str | None:
    return next((j for j in JOBS if module == j or module.startswith(j + ".")), None)


def cross_job_imports(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for every import from one job package into another, or from the floor into a job
    (the floor is everything outside curate/, train/, report/; only cli.py names the jobs)."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            src, dst = job_of(module), job_of(target)
            if dst is not None and src != dst and module != "sdpo_kit.cli":
                found.append(f"{module} -> {target}")
    return found


def test_no_job_imports_another_and_the_floor_imports_no_job():
    found = cross_job_imports(import_graph())
    assert not found, f"imports across jobs (move the shared part to the floor): {'; '.join(found)}"


def test_cross_job_check_sees_a_hand_added_import(tmp_path):
    """The checker itself: copy the package, add one function-level report -> train import."""
    import shutil

    pkg = tmp_path / "sdpo_kit"
    shutil.copytree(PACKAGE, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert cross_job_imports(import_graph(pkg)) == []
    html = pkg / "report" / "html.py"
    html.write_text(html.read_text() + "\n\ndef _late():\n    from sdpo_kit.train.run import run\n")
    assert cross_job_imports(import_graph(pkg)) == ["sdpo_kit.report.html -> sdpo_kit.train.run"]
    (pkg / "data" / "load.py").write_text((pkg / "data" / "load.py").read_text() + "\nimport sdpo_kit.curate.split\n")
    assert "sdpo_kit.data.load -> sdpo_kit.curate.split" in cross_job_imports(import_graph(pkg))


def test_the_step_recipe_does_not_import_the_run():
    """training/step.py is the step, training/loop.py the run around it: the step never reaches back."""
    graph = import_graph()
    assert "sdpo_kit.training.step" in graph["sdpo_kit.training.loop"]
    assert "sdpo_kit.training.loop" not in graph["sdpo_kit.training.step"]
    assert "sdpo_kit.training.loop" not in graph["sdpo_kit.training.reference"]


def test_cycle_finder_sees_function_level_submodule_and_relative_imports(tmp_path):
    """The checker itself: each kind of import edge closes a cycle it must report."""
    pkg = tmp_path / "sdpo_kit"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""pkg"""\n')
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from sdpo_kit.sub import b  # function level, b a submodule\n")
    (pkg / "sub" / "b.py").write_text("from .c import thing\n")  # relative
    (pkg / "sub" / "c.py").write_text("import os\nthing = 1\n")
    assert cycles(import_graph(pkg)) == []
    assert import_graph(pkg)["sdpo_kit.a"] == {"sdpo_kit.sub.b"}
    (pkg / "sub" / "c.py").write_text("import os\nthing = 1\ndef g():\n    import sdpo_kit.a.f\n")
    assert cycles(import_graph(pkg)) == [["sdpo_kit.a", "sdpo_kit.sub.b", "sdpo_kit.sub.c", "sdpo_kit.a"]]
    (pkg / "sub" / "c.py").write_text("from sdpo_kit.sub import VALUE  # the package, not a submodule\n")
    (pkg / "sub" / "__init__.py").write_text("from sdpo_kit.sub.c import VALUE\n")
    assert cycles(import_graph(pkg)) == [["sdpo_kit.sub", "sdpo_kit.sub.c", "sdpo_kit.sub"]]
    with pytest.raises(AssertionError, match="sdpo_kit.sub -> sdpo_kit.sub.c -> sdpo_kit.sub"):
        found = cycles(import_graph(pkg))
        assert not found, f"import cycle(s): {describe(found)}"
