"""The main job end to end on the shipped default model and data.

    make demo

Grows with the pipeline: inspect -> score -> split -> train -> report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner  # noqa: F401  (kept for parity with tests)

from sdpo_kit.cli import app

REPO = Path(__file__).resolve().parent.parent
DATA = (REPO / ".." / "shared" / "data").resolve()
OUT = REPO / "demo_out"


def run(*args: str) -> None:
    print("\n$ sdpo " + " ".join(args), flush=True)
    try:
        app(list(args), standalone_mode=False)
    except SystemExit as e:  # typer.Exit inside commands
        if e.code:
            sys.exit(e.code)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    run("data", "inspect", str(DATA / "alpaca_eval_pairs.parquet"))
    print(f"\nEverything went to {OUT}")


if __name__ == "__main__":
    main()
