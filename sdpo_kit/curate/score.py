"""`sdpo curate score`: score every pair of a file with a reference model.

    sdpo curate score data/dpo_en_demo.json --model default --limit 32 --out /tmp/scored.parquet

The command is this file; the work is the scoring engine's (`sdpo_kit/scoring/`: `frame.py` the
TRL-exact numbers, `cache.py` the pair cache, `files.py` shards, resume and accelerate).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from sdpo_kit.scoring.files import ScoreFileConfig, score_file, summary
from sdpo_kit.scoring.frame import ScoreConfig


def run(cfg: ScoreFileConfig, scorer: ScoreConfig) -> Path:
    """`sdpo curate score`: score the file, print where it went and how much of the margin is length."""
    from sdpo_kit.console import main_process

    path = score_file(cfg, scorer)  # errors (bad input, an --out over the input) are answered by the CLI
    if main_process():  # by RANK: under a launcher every process returns here, one prints
        print(summary(path))
        from sdpo_kit.length import judge_columns, score_diagnosis

        names = pl.read_parquet_schema(path)
        cols = [c for c in ("margin", "margin_per_token", "margin_shared", "chosen_tokens", "rejected_tokens")
                if c in names]
        frame = pl.read_parquet(path, columns=cols + judge_columns(pl.DataFrame(schema=names)))
        for line in score_diagnosis(frame):  # how much of the margin is answer length (issue 12)
            print(line)
    return path
