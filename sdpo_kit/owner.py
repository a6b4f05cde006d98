"""Whose folder is it: the marker every folder-writing command leaves, and the checks before it writes.

    python -c "from sdpo_kit.owner import folder_owner; print(folder_owner('demo_out/partitions'))"

Every command that writes a folder (`data split`, `curate split`, `data card`, `train`, `eval`,
`report`) leaves `OWNER_FILE` inside naming itself, and runs `claim_folder` under its
`io.folder_lock` before any work: never over its own input, never into another command's folder,
an earlier result replaced only with `--overwrite` (docs/ARCHITECTURE.md, "One owner per folder").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sdpo_kit.io import read_json, refuse_overwriting_input, write_json

OWNER_FILE = ".sdpo_kit"  # inside every folder a command writes: {"command": "sdpo train", ...}
# Folders written before the marker existed, known by the file only that command writes.
_SIGNATURES = (("run.json", "sdpo train"), ("eval.json", "sdpo eval"), ("report.html", "sdpo report"))


def folder_owner(folder: str | os.PathLike) -> str | None:
    """The command that wrote `folder`: its marker, else the file only that command writes; None if unknown."""
    folder = Path(folder)
    try:
        owner = read_json(folder / OWNER_FILE).get("command")
        if isinstance(owner, str):
            return owner
    except (OSError, ValueError, AttributeError):
        pass
    for name, command in _SIGNATURES:
        if (folder / name).is_file():
            return command
    try:
        manifest = read_json(folder / "manifest.json")
    except (OSError, ValueError):
        return None
    return "sdpo data split" if isinstance(manifest, dict) and "sides" in manifest else "sdpo curate split"


def write_owner(folder: str | os.PathLike, command: str, **record: Any) -> Path:
    """Leave the marker naming the command that wrote `folder` (and what it was written from)."""
    return write_json(Path(folder) / OWNER_FILE, {"command": command, **record})


def claim_folder(out: str | os.PathLike, command: str, overwrite: bool, inputs=(), flag: str = "--out") -> None:
    """Checks before `command` writes the folder `out`: it replaces none of `inputs` (nor a folder
    holding one), holds no other command's files, and an earlier result of `command` is replaced
    only with `overwrite` (True: the command may refresh its own folder). Raised before any work."""
    from sdpo_kit.errors import UsageError

    out = Path(out)
    refuse_overwriting_input(inputs, out, flag)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out}", "is a file, not a folder; pick another --out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    owner = folder_owner(out)
    if owner is not None and owner != command:
        raise UsageError(f"{flag} {out}", f"holds the files of `{owner}`; `{command}` writes its own folder: "
                         "pick another --out")
    if not overwrite:
        what = f"an earlier `{command}` result" if owner else "files"
        raise FileExistsError(f"{out} exists and holds {what}; pass --overwrite to replace it")
