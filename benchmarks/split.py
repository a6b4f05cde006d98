"""How long `sdpo curate split` takes on 100,000 scored pairs (the issue's bar: under 5 s).

    python benchmarks/split.py [SCORED.parquet] [--rows 100000]

Without a scored file it builds one from the real AlpacaEval pairs (data/) with a
length-proxy margin (0.9 * (rejected_tokens - chosen_tokens), tokens = chars // 4; no model),
resampled with replacement to --rows rows. Resampling keeps real text, lengths and source
mix; pair_ids repeat, which the splitter does not care about (it keys on row position).
Prints, per strategy, the library core (`split_frame`) and the whole command (`split_file`:
reading, splitting, writing step parquets, dropped, manifest, card and three PNG plots).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sdpo_kit.curate.split import SplitConfig, split_file, split_frame  # noqa: E402

RUNS = [
    ("by-source", {}),
    ("easy-to-hard", {"steps": 3}),
    ("easy-to-hard + stratify + filters", {"steps": 3, "stratify": "source", "drop_truncated": True, "keep_easiest": 0.8}),
    ("hard-to-easy", {"steps": 3}),
    ("random", {"steps": 2, "seed": 1}),
    ("kmeans", {"steps": 3}),
]


def synthesize(rows: int, out: Path) -> Path:
    from sdpo_kit.data import load_pairs

    pairs = load_pairs(REPO / "data" / "alpaca_eval_pairs.parquet").pairs
    chars = {c: pl.col(c).list.eval(pl.element().struct.field("content").str.len_chars()).list.sum().cast(pl.Int64)
             for c in ("prompt", "chosen", "rejected")}
    df = pairs.sample(rows, with_replacement=True, seed=0).with_columns(
        (chars[c] // 4).alias(f"{c}_tokens") for c in chars
    ).with_columns(
        (0.9 * (pl.col("rejected_tokens") - pl.col("chosen_tokens"))).alias("margin"),
        (pl.col("judge_confidence") - 0.5).alias("margin_per_token"),
        (pl.col("chosen_tokens") > 1024).alias("chosen_truncated"),
        (pl.col("rejected_tokens") > 1024).alias("rejected_truncated"),
    )
    df.write_parquet(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("scored", nargs="?", help="a scored parquet (default: synthesize from AlpacaEval)")
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_split."))
    path = Path(args.scored) if args.scored else synthesize(args.rows, tmp / "scored.parquet")
    df = pl.read_parquet(path)
    print(f"{df.height:,} scored pairs from {path} ({path.stat().st_size / 2**20:.0f} MiB); "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    split_frame(df.head(1000), SplitConfig(strategy="kmeans", steps=2))  # pay sklearn's import once
    for i, (name, kw) in enumerate(RUNS):
        cfg = SplitConfig(strategy=name.split(" ")[0], **kw)
        t0 = time.perf_counter()
        split_frame(df, cfg)
        core = time.perf_counter() - t0
        t0 = time.perf_counter()
        split_file(path, tmp / f"out{i}", cfg)
        whole = time.perf_counter() - t0
        print(f"{name:36s} split_frame {core:6.2f} s   split_file (with outputs, card, plots) {whole:6.2f} s")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
