"""The main job end to end on the shipped default model and data.

    make demo          # or: .venv/bin/python scripts/demo.py

inspect -> slice AlpacaEval by prompt (train / held-out) -> score with SmolLM2-135M-Instruct ->
split easy-to-hard into 3 steps -> stepwise DPO -> held-out eval -> HTML report. Every stage is
the real CLI called in-process; rerunning reuses what is already done (scorer cache, --resume).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import polars as pl

from sdpo_kit.cli import app
from sdpo_kit.data import load_pairs, prompt_text
from sdpo_kit.io import write_parquet

REPO = Path(__file__).resolve().parent.parent
ALPACA = REPO / "data" / "alpaca_eval_pairs.parquet"
OUT = REPO / "demo_out"
TRAIN_PER_SOURCE = 8  # 5 sources -> 40 training pairs, ~13 per step
HELDOUT_PROMPTS = 40  # prompts kept out of training entirely
HELDOUT_PAIRS = 16
MAX_LENGTH = 192  # tokens of prompt + answer; keeps a CPU step to seconds
SEED = 0


def run(*args: str) -> None:
    print(f"\n$ sdpo {' '.join(args)}", flush=True)
    t0 = time.time()
    try:
        app(list(args), standalone_mode=False)
    except SystemExit as e:  # typer.Exit raised inside a command
        if e.code:
            sys.exit(e.code)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)


def make_slices() -> tuple[Path, Path]:
    """Train and held-out slices that share no prompt (seeded), as canonical parquet files."""
    pairs = load_pairs(ALPACA).pairs  # rejects (identical, empty, duplicate) are left out here
    pairs = pairs.with_columns(_text=prompt_text())
    prompts = pairs.select("_text").unique().sort("_text").sample(fraction=1.0, shuffle=True, seed=SEED)
    held_out = prompts["_text"][:HELDOUT_PROMPTS].implode()
    train = (pairs.filter(~pl.col("_text").is_in(held_out)).sample(fraction=1.0, shuffle=True, seed=SEED)
             .group_by("source", maintain_order=True).head(TRAIN_PER_SOURCE).sort("pair_id"))
    heldout = pairs.filter(pl.col("_text").is_in(held_out)).sort("pair_id").sample(HELDOUT_PAIRS, seed=SEED)
    paths = OUT / "train.parquet", OUT / "heldout.parquet"
    for frame, path in zip((train, heldout), paths):
        write_parquet(path, frame.drop("_text"))
    print(f"slices: {train.height} training pairs, {heldout.height} held-out pairs, no shared prompt")
    return paths


def main() -> None:
    OUT.mkdir(exist_ok=True)
    t0 = time.time()
    run("data", "inspect", str(ALPACA))
    train, heldout = make_slices()
    scored, parts, run_dir, report = (OUT / "scored.parquet", OUT / "partitions",
                                      OUT / "runs" / "sdpo", OUT / "report")
    run("curate", "score", str(train), "--model", "default", "--out", str(scored), "--max-length", str(MAX_LENGTH))
    run("curate", "split", str(scored), "--steps", "3", "--strategy", "easy-to-hard", "--out", str(parts),
        "--overwrite")
    resume = ["--resume"] if (run_dir / "run.json").exists() else []
    run("train", "--config", str(REPO / "configs" / "sdpo_demo.yaml"), "--partitions", str(parts),
        "--out", str(run_dir), *resume)
    run("eval", "--run", str(run_dir), "--data", str(heldout), "--generate", "4", "--max-new-tokens", "48")
    run("report", str(run_dir), "--out", str(report))
    print(f"\nDemo finished in {time.time() - t0:.0f} s. Everything is under {OUT}:")
    for name, path in [("scored pairs", scored), ("partitions + data card", parts / "README.md"),
                       ("run (models, summaries)", run_dir / "run.json"), ("held-out eval", run_dir / "eval"),
                       ("report", report / "report.html")]:
        print(f"  {name:<24} {path}")


if __name__ == "__main__":
    main()
