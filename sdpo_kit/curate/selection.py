"""Selection for `sdpo curate split`: keep the easiest share by any numeric key, overall or within each source.

    sdpo curate split difficulty.parquet --keep_easiest 0.7 --by val_loss --keep_per_source --strategy random --out parts/

Selective DPO (Gao et al., ICML 2025) gains by leaving out the hardest pairs, and warns that this
can wipe out a skill (Mistral's GSM8K fell from 40.7 to 14.5 when the math pairs were the hard
ones). `--keep_per_source` keeps the easiest share of every source instead of the whole's, and
the manifest/card show per source the pairs in and kept, with a one-line warning when a source
loses more than twice the overall drop share. Which end of a key is easy: `--easier higher` for
margins (the default for any column not named *loss*), `lower` for losses such as `val_loss`.
"""

from __future__ import annotations

import polars as pl

EASIER = ("auto", "higher", "lower")


def higher_is_easier(by: str, easier: str) -> bool:
    """Whether a higher `by` means an easier pair: `auto` = lower for loss columns (val_loss), else higher."""
    if easier == "auto":
        return not by.removesuffix("_lc").endswith("loss")
    return easier == "higher"


def mark_not_easiest(df: pl.DataFrame, key: str, share: float, per_source: bool, higher: bool,
                     row: str) -> pl.DataFrame:
    """`drop_reason` = "not_easiest" for the survivors outside the easiest `share` (of all of them, or of
    each source); input order (column `row`) breaks ties, so the cut is deterministic."""
    alive = df.filter(pl.col("drop_reason").is_null()).sort([key, row], descending=[higher, False])
    if per_source:
        counts = dict(alive.group_by("source").len().iter_rows())
        limit = {s: round(share * n) for s, n in counts.items()}
        alive = alive.with_columns(pl.int_range(pl.len()).over("source").alias("__rank"))
        cut = alive.filter(pl.col("__rank") >= pl.col("source").replace_strict(limit, return_dtype=pl.Int64))
    else:
        cut = alive[round(share * alive.height):]
    return df.with_columns(
        pl.when(pl.col(row).is_in(cut[row].implode()) & pl.col("drop_reason").is_null())
        .then(pl.lit("not_easiest")).otherwise(pl.col("drop_reason")).alias("drop_reason"))


def selection_record(given: pl.DataFrame, parts: list[pl.DataFrame]) -> dict:
    """Per source, pairs in and kept; the overall drop share; the warning when a source loses more
    than twice the overall drop share (or every pair)."""
    kept = pl.concat([p.select("source") for p in parts]) if parts else pl.DataFrame({"source": []})
    n_in = dict(given.group_by("source").len().sort("source").iter_rows())
    n_kept = dict(kept.group_by("source").len().iter_rows())
    total_in, total_kept = sum(n_in.values()), sum(n_kept.values())
    overall = 1 - total_kept / total_in if total_in else 0.0
    sources = {str(s): {"in": n, "kept": n_kept.get(s, 0), "drop_share": 1 - n_kept.get(s, 0) / n}
               for s, n in n_in.items()}
    over = [s for s, r in sources.items() if r["kept"] == 0 or (overall > 0 and r["drop_share"] > 2 * overall)]
    warning = None
    if over:
        worst = ", ".join(f"{s} {sources[s]['drop_share']:.0%}" for s in over)
        warning = (f"selection warning: {len(over)} source(s) lose more than twice the overall drop share "
                   f"{overall:.0%}: {worst}; --keep_per_source keeps the easiest share of each")
    return {"pairs_in": total_in, "pairs_kept": total_kept, "drop_share": overall, "sources": sources,
            "warning": warning}


def selection_lines(record: dict) -> list[str]:
    """What `sdpo curate split` prints: one line per source, then the warning if any."""
    from sdpo_kit.escape import term

    lines = [f"kept {record['pairs_kept']} of {record['pairs_in']} pairs (drop share {record['drop_share']:.1%}); "
             "per source kept/in: " + ", ".join(f"{term(s)} {r['kept']}/{r['in']}" for s, r in record["sources"].items())]
    return lines + ([record["warning"]] if record["warning"] else [])


def selection_table(record: dict) -> list[tuple]:
    """The partition card's "Selection" section (`sdpo_kit.render` blocks): pairs in and kept per source."""
    rows = [[s, r["in"], r["kept"], f"{r['drop_share']:.1%}"] for s, r in record["sources"].items()]
    rows.append(["all", record["pairs_in"], record["pairs_kept"], f"{record['drop_share']:.1%}"])
    table = ("table", ["source", "pairs in", "pairs kept", "dropped"], rows)  # source names are data: escaped
    return [table] + ([("warn", "{}", record["warning"])] if record["warning"] else [])
