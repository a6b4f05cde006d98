"""The main job end to end on the shipped default model and data.

    make demo          # or: .venv/bin/python scripts/demo.py

inspect -> `sdpo data split` AlpacaEval by prompt (train / held-out, no prompt on both sides) ->
sample a small slice of each side -> score with SmolLM2-135M-Instruct -> split easy-to-hard into 3
steps -> stepwise DPO and plain DPO (the same config, only `--mode` differs) -> held-out eval of
both -> one HTML report with the sDPO-vs-DPO verdict at the top. Every stage is the real CLI called
in-process; rerunning reuses what is already done (scorer cache, --resume).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import polars as pl

from sdpo_kit.cli import app
from sdpo_kit.io import write_parquet

REPO = Path(__file__).resolve().parent.parent
ALPACA = REPO / "data" / "alpaca_eval_pairs.parquet"
OUT = REPO / "demo_out"
TRAIN_PER_SOURCE = 8  # 5 sources -> 40 training pairs, ~13 per step
HELDOUT_SHARE = "0.2"  # share of distinct prompts `sdpo data split` keeps out of training entirely
HELDOUT_PAIRS = 16  # sampled from the held-out side: scoring 5 models on them stays within a minute
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


def make_slices(split: Path) -> tuple[Path, Path]:
    """Small seeded samples of the two sides `sdpo data split` wrote (a subset keeps the split's promise)."""
    train = (pl.read_parquet(split / "train.parquet").sample(fraction=1.0, shuffle=True, seed=SEED)
             .group_by("source", maintain_order=True).head(TRAIN_PER_SOURCE).sort("pair_id"))
    heldout = pl.read_parquet(split / "heldout.parquet").sort("pair_id").sample(HELDOUT_PAIRS, seed=SEED)
    paths = OUT / "train.parquet", OUT / "heldout.parquet"
    for frame, path in zip((train, heldout), paths):
        write_parquet(path, frame)
    print(f"slices: {train.height} training pairs, {heldout.height} held-out pairs, no shared prompt")
    return paths


def main() -> None:
    OUT.mkdir(exist_ok=True)
    t0 = time.time()
    run("data", "inspect", str(ALPACA))
    run("data", "split", str(ALPACA), "--heldout", HELDOUT_SHARE, "--by", "prompt", "--seed", str(SEED),
        "--out", str(OUT / "split"), "--overwrite")
    train, heldout = make_slices(OUT / "split")
    scored, parts, run_dir, report = (OUT / "scored.parquet", OUT / "partitions",
                                      OUT / "runs" / "sdpo", OUT / "report")
    dpo_dir = OUT / "runs" / "dpo"
    run("curate", "score", str(train), "--model", "default", "--out", str(scored), "--max_length", str(MAX_LENGTH))
    run("curate", "split", str(scored), "--steps", "3", "--strategy", "easy-to-hard", "--out", str(parts),
        "--overwrite")
    for mode, out in [("stepwise", run_dir), ("dpo", dpo_dir)]:  # the same config; only --mode differs
        resume = ["--resume"] if (out / "run.json").exists() else []
        run("train", "--config", str(REPO / "configs" / "sdpo_demo.yaml"), "--partitions", str(parts),
            "--out", str(out), "--mode", mode, *resume)
    for out in (run_dir, dpo_dir):
        run("eval", "--run", str(out), "--data", str(heldout), "--generate", "4", "--max_new_tokens", "48")
    run("report", str(run_dir), str(dpo_dir), "--out", str(report))
    print(f"\nDemo finished in {time.time() - t0:.0f} s. Everything is under {OUT}:")
    for name, path in [("scored pairs", scored), ("partitions + data card", parts / "README.md"),
                       ("train/held-out split", OUT / "split" / "manifest.json"),
                       ("sDPO run", run_dir / "run.json"), ("DPO run", dpo_dir / "run.json"),
                       ("held-out eval", run_dir / "eval"),
                       ("report", report / "report.html")]:
        print(f"  {name:<24} {path}")


if __name__ == "__main__":
    main()
