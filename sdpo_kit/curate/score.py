"""`sdpo curate score`: score every pair of a file with a reference model.

    sdpo curate score data/dpo_en_demo.json --model default --limit 32 --out /tmp/scored.parquet

The command is this file; the work is the scoring engine's (`sdpo_kit/scoring/`: `frame.py` the
TRL-exact numbers, `cache.py` the pair cache, `files.py` shards, resume and accelerate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import polars as pl

from sdpo_kit.errors import UsageError
from sdpo_kit.scoring.files import score_file, summary
from sdpo_kit.scoring.frame import ScoreConfig


@dataclass
class ScoreFileConfig:
    """Score every pair with a reference model: log-probs, margins, token counts, truncation flags.

    The scorer's settings (max_length, truncation_mode, dtype, ...: `ScoreConfig`) come after these.
    """

    # The command batches more tokens per forward than the library default: faster on a CPU, and the
    # batching changes no number beyond float noise (token_budget is not in the provenance).
    cli_defaults: ClassVar[dict] = {"token_budget": 4096}

    data: str = field(metadata={"help": "Preference data: any file or folder `sdpo data inspect` reads.",
                                "positional": True})
    out: str = field(metadata={"help": "Scored parquet to write (rejects go beside it)."})
    model: str = field(default="default", metadata={"help": "Reference model: `default` or a local folder."})
    reference: str | None = field(default=None, metadata={"help": "Same as --model (reads better beside --policy)."})
    policy: str | None = field(default=None, metadata={
        "help": "Also score this model and add its implicit reward margin."})
    limit: int | None = field(default=None, metadata={"help": "Read only the first N input rows."})
    format: str | None = field(default=None, metadata={"help": "Force the input format (default: detected)."})
    shard_rows: int = field(default=512, metadata={"help": "Input rows per shard (the unit of resume)."})
    resume: bool = field(default=True, metadata={
        "help": "Keep finished shards of an interrupted run with the same input, --limit, --shard_rows, model "
                "and settings (else start afresh, saying why)."})
    cache: bool = field(default=True, metadata={"help": "Reuse pairs already scored with the same model and settings."})

    def __post_init__(self):
        if self.reference is not None and self.model not in ("default", self.reference):
            raise UsageError(f"--model {self.model!r} and --reference {self.reference!r} disagree; pass one of them")


def run(cfg: ScoreFileConfig, scorer: ScoreConfig) -> Path:
    """`sdpo curate score`: score the file, print where it went and how much of the margin is length."""
    from sdpo_kit.console import main_process

    path = score_file(cfg.data, cfg.out, model=cfg.reference or cfg.model, config=scorer, policy=cfg.policy,
                      resume=cfg.resume, limit=cfg.limit, format=cfg.format, shard_rows=cfg.shard_rows,
                      cache=cfg.cache)  # errors (bad input, an --out over the input) are answered by the CLI
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
