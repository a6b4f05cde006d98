"""What `sdpo data inspect` reports: format, row accounting, rejects per reason, sources, lengths.

    python -c "from sdpo_kit.curate.data.stats import inspect_data; print(inspect_data('data/dpo_en_demo.json'))"

Lengths are characters of message content (the prompt: all its messages together); with a
tokenizer also tokens of the same text without a chat template (the scorer counts templated
tokens; these are for a first look at how much truncation to expect).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from sdpo_kit.curate.data.load import load_pairs

SIDES = ("prompt", "chosen", "rejected")


def inspect_data(path: str | Path, *, format: str | None = None, columns: dict[str, str] | None = None,
                 keep_duplicates: bool = False, strict: bool = False, limit: int | None = None,
                 tokenizer: Any = None) -> tuple[dict, list]:
    """(summary dict, rejects) for the pairs behind `path`; `valid + sum(reasons) == rows` always."""
    result = load_pairs(path, format=format, columns=columns, keep_duplicates=keep_duplicates,
                        strict=strict, limit=limit)
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


def prompt_text() -> pl.Expr:
    """The prompt's last turn (the message being answered) on canonical pairs: the key that a
    by-prompt train / held-out split groups on, so no prompt lands on both sides."""
    return pl.col("prompt").list.last().struct.field("content")


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
