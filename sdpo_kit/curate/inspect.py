"""What `sdpo data inspect` reports: format, row accounting, rejects per reason, sources, lengths.

    python -c "from sdpo_kit.curate.inspect import InspectConfig, inspect_data; print(inspect_data(InspectConfig('data/dpo_en_demo.json'))[0])"

Lengths are characters of message content (the prompt: all its messages together); with a
tokenizer also tokens of the same text without a chat template (the scorer counts templated
tokens; these are for a first look at how much truncation to expect).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from sdpo_kit.data.load import load_pairs

SIDES = ("prompt", "chosen", "rejected")


@dataclass
class InspectConfig:
    """Detected format, rows, valid pairs, rejects per reason, source mix and lengths."""

    path: str = field(metadata={"help": "Preference data: file (.jsonl/.json/.parquet/.csv[.gz]) or directory.",
                                "positional": True})
    model: str | None = field(default=None, metadata={
        "help": "Also count tokens with this model's tokenizer ('default' or a local dir)."})
    json: bool = field(default=False, metadata={"help": "Print one JSON object instead of tables."})
    format: str | None = field(default=None, metadata={
        "help": "Force the format: trl-standard, trl-conversational, sharegpt or hh (default: auto-detect)."})
    prompt_col: str | None = field(default=None, metadata={"help": "Column holding the prompt."})
    chosen_col: str | None = field(default=None, metadata={"help": "Column holding the chosen answer."})
    rejected_col: str | None = field(default=None, metadata={"help": "Column holding the rejected answer."})
    source_col: str | None = field(default=None, metadata={"help": "Column naming each pair's source."})
    conversations_col: str | None = field(default=None, metadata={"help": "ShareGPT conversations column."})
    keep_duplicates: bool = field(default=False, metadata={"help": "Count duplicate pairs as valid."})
    strict: bool = field(default=False, metadata={"help": "Stop at the first bad row with file:row: problem."})
    limit: int | None = field(default=None, metadata={"help": "Read only the first N rows."})
    rejects: str | None = field(default=None, metadata={"help": "Write the rejects (JSONL) to this file."})

    def columns(self) -> dict[str, str]:
        """The *_col fields as `load_pairs(columns=...)` (canonical name -> the file's column)."""
        cols = {"prompt": self.prompt_col, "chosen": self.chosen_col, "rejected": self.rejected_col,
                "source": self.source_col, "conversations": self.conversations_col}
        return {k: v for k, v in cols.items() if v}


def run(cfg: InspectConfig) -> dict:
    """`sdpo data inspect`: print the summary (tables, or one JSON object with --json); returns it."""
    import json

    from rich.console import Console

    from sdpo_kit.data.load import write_rejects
    from sdpo_kit.data.containers import list_files
    from sdpo_kit.io import refuse_overwriting_input

    tokenizer = None
    if cfg.model:
        from sdpo_kit.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model)
    # A spinner on stderr: a large file with --model takes a while, and stdout stays one JSON object.
    status = Console(stderr=True).status(f"reading {cfg.path}" + (" and counting tokens" if cfg.model else ""))
    with status:  # errors: the CLI boundary answers them in one line
        summary, bad = inspect_data(cfg, tokenizer)
    if cfg.rejects:
        refuse_overwriting_input(list_files(cfg.path), cfg.rejects, "--rejects")
        summary["rejects_file"] = str(write_rejects(bad, cfg.rejects))
    if cfg.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print_summary(summary)
    return summary


def print_summary(s: dict) -> None:
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


def inspect_data(cfg: InspectConfig, tokenizer: Any = None) -> tuple[dict, list]:
    """(summary dict, rejects) for the pairs behind `cfg.path`; `valid + sum(reasons) == rows` always.

    `tokenizer` (loaded from `cfg.model` by `run`) adds token lengths."""
    path = cfg.path
    result = load_pairs(path, format=cfg.format, columns=cfg.columns(), keep_duplicates=cfg.keep_duplicates,
                        strict=cfg.strict, limit=cfg.limit)
    reasons = Counter(r.reason for r in result.rejects)
    pairs = result.pairs
    summary: dict[str, Any] = {
        "path": str(path),
        "format": result.format,
        "rows": result.rows,
        "valid": pairs.height,
        "rejected": len(result.rejects),
        "reasons": dict(sorted(reasons.items())),
        "sources": dict(pairs["source"].value_counts(sort=True).iter_rows()) if pairs.height else {},
        "prompt_turns": _stats(pairs["prompt"].list.len()) if pairs.height else {},
        "chars": {side: _stats(_char_lengths(pairs, side)) for side in SIDES} if pairs.height else {},
        "examples": {reason: next(f"{r.file}:{r.row}: {r.detail}" for r in result.rejects if r.reason == reason)
                     for reason in sorted(reasons)},
    }
    if tokenizer is not None and pairs.height:
        summary["tokens"] = {side: _stats(_token_lengths(pairs, side, tokenizer)) for side in SIDES}
    assert summary["valid"] + sum(reasons.values()) == summary["rows"], summary  # nothing lost
    return summary, result.rejects


def _stats(values: pl.Series) -> dict[str, float]:
    return {"mean": round(float(values.mean()), 1), "p50": float(values.median()),
            "p95": float(values.quantile(0.95, "nearest")), "max": int(values.max()), "min": int(values.min())}


def _contents(pairs: pl.DataFrame, side: str) -> pl.Series:
    """Per pair, the contents of one side's messages joined (the prompt's turns with newlines)."""
    return pairs[side].list.eval(pl.element().struct.field("content")).list.join("\n")


def _char_lengths(pairs: pl.DataFrame, side: str) -> pl.Series:
    return _contents(pairs, side).str.len_chars()


def _token_lengths(pairs: pl.DataFrame, side: str, tokenizer) -> pl.Series:
    ids = tokenizer(_contents(pairs, side).to_list(), add_special_tokens=False)["input_ids"]
    return pl.Series(side, [len(x) for x in ids])
