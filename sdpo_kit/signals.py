"""Difficulty signals side by side: which columns measure difficulty, how they agree, suspect labels.

    python -c "import polars as pl; from sdpo_kit.signals import signal_record, signal_table; from sdpo_kit.render import to_markdown; print(to_markdown(signal_table(signal_record(pl.read_parquet('difficulty.parquet'))))"

A scored or cross-fitted file may hold several answers to "how hard is this pair": the reference's
margin γ_ref (summed, per token, over the shared prefix), its length-controlled key `<by>_lc`, the
cross-fitted `val_loss` / `learned_share` (`sdpo curate crossfit`), a judge's `judge_*` scores, and
the answer-length ratio that summed margins partly measure. The cards show their Spearman matrix
(Selective DPO found reward-model margins, judge margins and length track learning difficulty
poorly) and count "likely mislabelled" pairs: γ_ref < 0 and the implicit reward margin < 0 in
every cross-fit run. Flag only: labels are never flipped (flipping gained ≤ 0.9 LC points there).
"""

from __future__ import annotations

import math

import polars as pl

MARGINS = ("margin", "margin_per_token", "margin_shared")
CROSSFIT = ("val_loss", "learned_share")
LENGTH = "log_length_ratio"  # ln(chosen_tokens / rejected_tokens)


def signal_columns(frame: pl.DataFrame) -> list[str]:
    """The difficulty signals present (numeric columns only), in a fixed order."""
    numeric = {c for c, t in frame.schema.items() if t.is_numeric()}
    names = [c for c in MARGINS if c in numeric]
    names += sorted(c for c in numeric if c.endswith("_lc"))
    names += [c for c in CROSSFIT if c in numeric]
    names += sorted(c for c in numeric if c.startswith("judge_"))
    if {"chosen_tokens", "rejected_tokens"} <= numeric:
        names.append(LENGTH)
    return names


def _values(frame: pl.DataFrame, name: str):
    if name == LENGTH:
        expr = (pl.col("chosen_tokens").cast(pl.Float64) / pl.col("rejected_tokens").cast(pl.Float64)).log()
        return frame.select(expr).to_series().to_numpy()
    return frame[name].cast(pl.Float64).to_numpy()


def signal_matrix(frame: pl.DataFrame) -> tuple[list[str], list[list[float | None]]]:
    """(names, Spearman ρ matrix) over the pairs where both signals are finite; None where undefined."""
    from sdpo_kit.stats import spearman

    names = signal_columns(frame)
    values = {n: _values(frame, n) for n in names}
    matrix = [[1.0 if a == b else spearman(values[a], values[b]) for b in names] for a in names]
    return names, matrix


def likely_mislabelled(frame: pl.DataFrame) -> int | None:
    """Pairs with γ_ref < 0 and an implicit reward margin < 0 in every cross-fit run (None: not cross-fitted)."""
    if "crossfit_margins" not in frame.columns or "margin" not in frame.columns:
        return None
    runs = pl.col("crossfit_margins").list.drop_nulls()
    hit = frame.select(((pl.col("margin") < 0) & (runs.list.len() > 0) & (runs.list.max() < 0)).fill_null(False).sum())
    return int(hit.item())


def signal_record(frame: pl.DataFrame) -> dict:
    """{"names", "spearman" (matrix), "pairs", "likely_mislabelled"}: what manifests store and cards show."""
    names, matrix = signal_matrix(frame)
    return {"names": names, "spearman": matrix, "pairs": frame.height, "likely_mislabelled": likely_mislabelled(frame)}


def signal_table(record: dict) -> list[tuple]:
    """The cards' `sdpo_kit.render` blocks of a `signal_record`: the ρ matrix, each signal's direction,
    the mislabelled count ([] with fewer than two signals)."""
    names, matrix = record["names"], record["spearman"]
    if len(names) < 2:
        return []
    fmt = lambda v: "–" if v is None or not math.isfinite(v) else f"{v:+.2f}"  # noqa: E731
    out = [("p", "Spearman ρ between the difficulty signals present (pairs where both are finite). Higher is easier "
                 "for the margins, `*_lc` and `learned_share`; **higher is harder for `val_loss`**; `log_length_ratio` "
                 "= ln(chosen/rejected tokens)."),
           ("table", ["signal", *names], [[n, *map(fmt, row)] for n, row in zip(names, matrix)])]
    count = record["likely_mislabelled"]
    if count is not None:
        out.append(("p", "Likely mislabelled: **{}** of {} pairs (γ_ref < 0 and implicit reward margin < 0 in every "
                         "cross-fit run). Flagged only; labels are never flipped.", count, record["pairs"]))
    return out
