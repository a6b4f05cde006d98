"""`sdpo data inspect`: what is in a preference file, and what would be rejected and why.

    sdpo data inspect data/alpaca_eval_pairs.parquet --json

Thin layer over `sdpo_kit.curate.data.stats.inspect_data`; the tokenizer loads only with --model.
"""

from __future__ import annotations

import json
from typing import Optional

import typer

FORMAT_HELP = "Force the format: trl-standard, trl-conversational, sharegpt or hh (default: auto-detect)."


def column_map(prompt_col, chosen_col, rejected_col, source_col, conversations_col) -> dict[str, str]:
    """The --*-col flags as `load_pairs(columns=...)` (canonical name -> the file's column)."""
    flags = {"prompt": prompt_col, "chosen": chosen_col, "rejected": rejected_col, "source": source_col,
             "conversations": conversations_col}
    return {k: v for k, v in flags.items() if v}


def inspect(
    path: str = typer.Argument(..., help="Preference data: file (.jsonl/.json/.parquet/.csv[.gz]) or directory."),
    model: Optional[str] = typer.Option(None, "--model", help="Also count tokens with this model's tokenizer ('default' or a local dir)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
    format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
    prompt_col: Optional[str] = typer.Option(None, "--prompt-col", help="Column holding the prompt."),
    chosen_col: Optional[str] = typer.Option(None, "--chosen-col", help="Column holding the chosen answer."),
    rejected_col: Optional[str] = typer.Option(None, "--rejected-col", help="Column holding the rejected answer."),
    source_col: Optional[str] = typer.Option(None, "--source-col", help="Column naming each pair's source."),
    conversations_col: Optional[str] = typer.Option(None, "--conversations-col", help="ShareGPT conversations column."),
    keep_duplicates: bool = typer.Option(False, "--keep-duplicates", help="Count duplicate pairs as valid."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first bad row with file:row: problem."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Read only the first N rows."),
    rejects: Optional[str] = typer.Option(None, "--rejects", help="Write the rejects (JSONL) to this file."),
) -> None:
    """Detected format, rows, valid pairs, rejects per reason, source mix and lengths."""
    from sdpo_kit.curate.data import write_rejects
    from sdpo_kit.curate.data.containers import list_files
    from sdpo_kit.curate.data.stats import inspect_data
    from sdpo_kit.io import refuse_overwriting_input

    tokenizer = None
    if model:
        from sdpo_kit.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    columns = column_map(prompt_col, chosen_col, rejected_col, source_col, conversations_col)
    from rich.console import Console

    # A spinner on stderr: a large file with --model takes a while, and stdout stays one JSON object.
    status = Console(stderr=True).status(f"reading {path}" + (" and counting tokens" if model else ""))
    with status:  # errors: the CLI boundary answers them in one line
        summary, bad = inspect_data(path, format=format, columns=columns, keep_duplicates=keep_duplicates,
                                    strict=strict, limit=limit, tokenizer=tokenizer)
    if rejects:
        refuse_overwriting_input(list_files(path), rejects, "--rejects")
        summary["rejects_file"] = str(write_rejects(bad, rejects))
    if as_json:
        typer.echo(json.dumps(summary, ensure_ascii=False))
    else:
        _print_summary(summary)


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    # Paths, source names and reject examples are data: escaped, so `[red]` or `[/]` in them is text, not markup.
    console.print(f"[bold]{escape(s['path'])}[/]  format [cyan]{s['format']}[/]")
    console.print(f"rows {s['rows']:,}  valid [green]{s['valid']:,}[/]  rejected [red]{s['rejected']:,}[/]")
    if s["reasons"]:
        table = Table("reason", "rows", "first example", title="Rejects")
        for reason, n in s["reasons"].items():
            table.add_row(reason, f"{n:,}", escape(s["examples"][reason][:100]))
        console.print(table)
    if s["sources"]:
        table = Table("source", "pairs", "share", title="Sources")
        for name, n in s["sources"].items():
            table.add_row(escape(name), f"{n:,}", f"{n / s['valid']:.1%}")
        console.print(table)
    for unit in ("chars", "tokens"):
        if s.get(unit):
            table = Table("", "mean", "p50", "p95", "min", "max", title=f"Lengths ({unit})")
            for side, st in s[unit].items():
                table.add_row(side, *(f"{st[k]:,.0f}" for k in ("mean", "p50", "p95", "min", "max")))
            console.print(table)
    if s.get("rejects_file"):
        console.print(f"rejects written to {escape(s['rejects_file'])}")


def split(
    data: str = typer.Argument(..., help="Preference data: any file or folder `sdpo data inspect` reads."),
    out: str = typer.Option(..., "--out", help="Folder for train.parquet, heldout.parquet, manifest.json."),
    heldout: float = typer.Option(0.2, "--heldout", help="Share of distinct prompts held out, in (0, 1)."),
    validation: float = typer.Option(0.0, "--validation", help="Share of distinct prompts for a validation side; 0 = none."),
    by: str = typer.Option("prompt", "--by", help="prompt (no prompt on two sides) | pair."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffle; the same seed gives the same sides."),
    format: Optional[str] = typer.Option(None, "--format", help=FORMAT_HELP),
) -> None:
    """Train / held-out (/ validation) files with no prompt on two sides, checked and recorded in manifest.json."""
    from sdpo_kit.curate.data.heldout import HeldoutConfig, run, summary
    from sdpo_kit.errors import SdpoError

    try:
        manifest = run(HeldoutConfig(data=data, out=out, heldout=heldout, validation=validation, by=by, seed=seed,
                                     format=format))
    except SdpoError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(e.exit_code) from None
    typer.echo(summary(manifest))
    from pathlib import Path

    typer.echo(f"wrote {Path(out)}/ (" + ", ".join(v["file"] for v in manifest["sides"].values()) + ", manifest.json)")
