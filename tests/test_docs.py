"""The docs are true to the code: ARCHITECTURE.md's module map lists exactly the package's modules,
and README's Python API runs as written (on the tiny model).

    python -m pytest -q tests/test_docs.py
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def module_map(text: str) -> set[str]:
    """Module paths of the tree in the "## Module map" section (two spaces of indent per folder level)."""
    block = text.split("## Module map", 1)[1].split("```", 2)[1]
    paths, folders = set(), []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        folders = folders[:depth]
        if name.endswith("/"):
            folders.append(name.rstrip("/"))
        elif name.endswith(".py"):
            paths.add("/".join([*folders, name]))
    return paths


def package_modules() -> set[str]:
    root = REPO / "sdpo_kit"
    return {"sdpo_kit/" + p.relative_to(root).as_posix() for p in root.rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def test_architecture_module_map_lists_every_module_and_no_other():
    listed = module_map((REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    actual = package_modules()
    assert not actual - listed, f"modules missing from docs/ARCHITECTURE.md's module map: {sorted(actual - listed)}"
    assert not listed - actual, f"docs/ARCHITECTURE.md lists modules that do not exist: {sorted(listed - actual)}"


def test_module_map_parser_sees_a_missing_or_extra_module():
    text = "## Module map\n```\nsdpo_kit/\n  a.py   x\n  sub/   y\n    b.py  z\n  c.py\n```\n"
    assert module_map(text) == {"sdpo_kit/a.py", "sdpo_kit/sub/b.py", "sdpo_kit/c.py"}


def python_blocks(text: str, section: str) -> list[str]:
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.mark.slow
def test_readme_python_api_runs_as_written(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Both README blocks, in one namespace, from a folder holding the repository's data/: only the
    model name is swapped for the tiny model."""
    import json

    blocks = python_blocks((REPO / "README.md").read_text(encoding="utf-8"), "Python API")
    assert len(blocks) == 2 and 'MODEL = "default"' in blocks[0]
    (tmp_path / "data").symlink_to(REPO / "data")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for code in blocks:
        exec(compile(code.replace('MODEL = "default"', f"MODEL = {str(tiny_model_dir)!r}"), "README.md", "exec"),
             namespace)
    run = json.loads((tmp_path / "api/runs/sdpo/run.json").read_text())
    assert run["status"] == "done" and len(run["steps"]) == 2
    assert run["settings"]["trl"]["max_length"] == 256  # from the partitions, as `sdpo train` does
    assert [m["name"] for m in namespace["result"]["models"]] == ["S", "M1", "M2"]
    assert namespace["scored"].height + len(namespace["rejects"]) == 4
    assert "margin" in capsys.readouterr().out
