"""`sdpo curate score`: reference log-probs and margins for every pair (thin layer over sdpo_kit.curate.score).

    sdpo curate score data/dpo_en_demo.json --model default --limit 32 --out /tmp/scored.parquet
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def score(
    data: Path = typer.Argument(..., help="Preference data: any file or folder `sdpo data inspect` reads."),
    out: Path = typer.Option(..., "--out", "-o", help="Scored parquet to write (rejects go beside it)."),
    model: str = typer.Option("default", "--model", "-m", help="Reference model: `default` or a local folder."),
    reference: Optional[str] = typer.Option(None, help="Same as --model (reads better beside --policy)."),
    policy: Optional[str] = typer.Option(None, help="Also score this model and add its implicit reward margin."),
    max_length: int = typer.Option(1024, help="Max prompt+completion tokens per sequence (TRL's); 0 = none."),
    truncation_mode: str = typer.Option("keep_start", help="keep_start | keep_end (TRL's)."),
    dtype: str = typer.Option("float32", help="float32 (TRL-exact) | bfloat16 (faster, for ordering)."),
    beta: float = typer.Option(0.1, help="DPO beta for the reward margin with --policy."),
    token_budget: int = typer.Option(4096, help="Tokens per forward call."),
    limit: Optional[int] = typer.Option(None, help="Read only the first N input rows."),
    format: Optional[str] = typer.Option(None, "--format", help="Force the input format (default: detected)."),
    shard_rows: int = typer.Option(512, help="Input rows per shard (the unit of resume)."),
    resume: bool = typer.Option(True, help="Keep finished shards of an interrupted run with the same input, "
                                            "--limit, --shard-rows, model and settings (else start afresh, saying why)."),
    cache: bool = typer.Option(True, help="Reuse pairs already scored with the same model and settings."),
) -> None:
    """Score every pair with a reference model: log-probs, margins, token counts, truncation flags."""
    from sdpo_kit.errors import UsageError
    from sdpo_kit.curate.score import ScoreConfig
    from sdpo_kit.curate.score import score_file, summary

    if reference is not None and model not in ("default", reference):
        raise UsageError(f"--model {model!r} and --reference {reference!r} disagree; pass one of them")
    # Errors (bad input, an --out over the input, a corrupt file) are answered by the CLI boundary.
    config = ScoreConfig(max_length=max_length or None, truncation_mode=truncation_mode, dtype=dtype,
                         beta=beta, token_budget=token_budget)
    path = score_file(data, out, model=reference or model, config=config, policy=policy, resume=resume,
                      limit=limit, format=format, shard_rows=shard_rows, cache=cache)
    from sdpo_kit.console import main_process

    if main_process():  # by RANK: under a launcher every process returns here, one prints
        typer.echo(summary(path))
        _length_lines(path)


def _length_lines(path: Path) -> None:
    """How much of the margin is answer length (issue 12): ρ per margin column, the warning if any."""
    import polars as pl

    from sdpo_kit.curate.length import judge_columns, score_diagnosis

    names = pl.read_parquet_schema(path)
    cols = [c for c in ("margin", "margin_per_token", "margin_shared", "chosen_tokens", "rejected_tokens") if c in names]
    frame = pl.read_parquet(path, columns=cols + judge_columns(pl.DataFrame(schema=names)))
    for line in score_diagnosis(frame):
        typer.echo(line)
