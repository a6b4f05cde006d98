"""The resume rule of sdpo_kit's resumable work folders (score shards, cross-fit runs): a stamp per folder.

    python -m pytest -q tests/test_hardening_curate.py -k afresh

A folder of finished units (shards, runs) is reused only when the stamp written with it (input
content, model, settings) equals this run's; otherwise it is emptied, and the caller says why in one
line built from `describe_change`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sdpo_kit.io import read_json, write_json


def describe_change(old: dict, new: dict, names: dict[str, str] | None = None, prefix: str = "") -> str:
    """Which stamp entries differ, in the user's words where `names` has them, e.g.
    `input content (sha256) 3fa1... -> 9c2e...; trl.learning_rate 1e-05 -> 2e-05`."""
    names = names or {}
    short = lambda v: f"{v[:12]}..." if isinstance(v, str) and len(v) > 16 else v  # noqa: E731
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "unset"), new.get(key, "unset")
        if isinstance(a, dict) and isinstance(b, dict) and key not in names:
            diffs.append(describe_change(a, b, names, f"{prefix}{key}."))
        elif json.dumps(a, default=str, sort_keys=True) != json.dumps(b, default=str, sort_keys=True):
            diffs.append(f"{names.get(key, prefix + key)} {short(a)} -> {short(b)}")
    return "; ".join(d for d in diffs if d)


def restamp(folder: Path, stamp: dict, resume: bool, name: str, names: dict[str, str] | None = None) -> str | None:
    """The resume rule of every resumable work folder (score shards, cross-fit runs): `folder` is kept
    when it holds `name` equal to `stamp` and `resume` is on, else removed; then created and stamped.
    Returns why it was removed (None: kept, or there was none), for the caller's one line."""
    path = folder / name
    why = None
    if folder.exists():
        try:
            old = read_json(path)
        except (OSError, ValueError):
            old = None
        why = ("--no_resume" if not resume else f"no readable {name}" if not isinstance(old, dict)
               else None if old == stamp else describe_change(old, stamp, names) or "stamp differs")
        if why is not None:
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, stamp)
    return why
