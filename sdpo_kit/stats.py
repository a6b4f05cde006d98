"""Statistics shared by curate and report: per-group margin statistics and paired bootstrap intervals.

    python -c "import numpy as np; from sdpo_kit.stats import paired_bootstrap; print(paired_bootstrap(np.array([[1., 2, 3]]), np.zeros((1, 3)))['lo'])"

`spearman` is the one rank correlation (length diagnosis, the report's difficulty signal);
`spearman_interval` its bootstrap interval over clusters (the selection experiment's seed agreement).
`margin_stats` is the one definition of "pairs, mean margin, share > 0 (reward accuracy; a NaN or
infinite margin never counts as > 0)": the
split manifest's steps and source order, the data cards and eval.json all aggregate with it.

`paired_bootstrap` serves `sdpo report`'s verdict and `analysis/compare.py`. Both arms are scored on
the same held-out pairs, so the difference is taken pair by pair (paired), and each bootstrap
draw resamples
- each arm's seeds (training runs) with replacement, when there are several, and
- the held-out clusters with replacement: a cluster is a prompt when several pairs share one
  (AlpacaEval has several answer pairs per prompt, and they are not independent), else a pair.
The interval is the 2.5 and 97.5 percentiles of the draws' mean difference.
"""

from __future__ import annotations

import numpy as np
import polars as pl


def margin_stats(col: str | None = "margin", median: bool = False) -> list[pl.Expr]:
    """Polars aggregations `pairs`, `mean_margin`, (`median_margin`), `reward_accuracy` (share of
    `col` > 0) of one frame or one group, in float64 whatever the column's dtype; `col=None`:
    `pairs` only (unscored data).

    `df.select(margin_stats())` for a whole frame, `df.group_by(g).agg(margin_stats())` per group."""
    if col is None:
        return [pl.len().alias("pairs")]
    m = pl.col(col).cast(pl.Float64)
    # A non-finite margin (a diverged model) is never a success: in polars NaN > 0 is true. It stays
    # in the denominator and makes the mean NaN, so the model reads as broken, not as accurate.
    correct = (m > 0) & m.is_finite()
    return [pl.len().alias("pairs"), m.mean().alias("mean_margin"), *([m.median().alias("median_margin")] if median else []),
            correct.mean().alias("reward_accuracy")]


def paired_bootstrap(a: np.ndarray, b: np.ndarray, clusters: np.ndarray | None = None, draws: int = 10_000,
                     seed: int = 0, level: float = 0.95) -> dict:
    """Mean over pairs of (a's value − b's value), each averaged over seeds, and its `level` interval.

    a: (seeds_a, pairs), b: (seeds_b, pairs) per-pair values (e.g. γ of the final models), the
    same pairs in the same column order; clusters: (pairs,) labels (default: every pair alone).
    Returns mean, lo, hi, p_positive (share of draws > 0), pairs, clusters, seeds_a, seeds_b and
    the draws themselves.
    """
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"paired_bootstrap: both arms need the same pairs, got {a.shape[1]} and {b.shape[1]}")
    clusters = np.arange(a.shape[1]) if clusters is None else np.asarray(clusters)
    rng = np.random.default_rng(seed)
    labels, idx = np.unique(clusters, return_inverse=True)

    def seed_mean(g: np.ndarray) -> np.ndarray:  # (draws, pairs): values averaged over resampled seeds
        w = rng.multinomial(len(g), np.full(len(g), 1 / len(g)), size=draws) / len(g)
        return w @ g

    diff = seed_mean(a) - seed_mean(b)
    w = rng.multinomial(len(labels), np.full(len(labels), 1 / len(labels)), size=draws)[:, idx]  # per pair
    means = (w * diff).sum(1) / w.sum(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return {"mean": float((a.mean(0) - b.mean(0)).mean()), "lo": float(lo), "hi": float(hi),
            "p_positive": float((means > 0).mean()), "pairs": int(a.shape[1]), "clusters": len(labels),
            "seeds_a": int(a.shape[0]), "seeds_b": int(b.shape[0]), "level": level, "draws": means}


def call(result: dict) -> str:
    """`ahead`, `behind` or `not distinguishable`: where the interval of a − b sits against 0."""
    if result["lo"] > 0:
        return "ahead"
    if result["hi"] < 0:
        return "behind"
    return "not distinguishable"


def spearman(x, y) -> float | None:
    """Spearman ρ over the rows where both are finite (average ranks for ties); None if undefined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3:
        return None
    rx = pl.Series(x[ok]).rank("average").to_numpy()
    ry = pl.Series(y[ok]).rank("average").to_numpy()
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_interval(x, y, clusters=None, draws: int = 2_000, seed: int = 0, level: float = 0.95) -> dict | None:
    """`spearman(x, y)` and its `level` interval from `draws` resamples of the clusters (rows of one
    cluster, e.g. one prompt, move together; default: every row alone). None when ρ is undefined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rho = spearman(x, y)
    if rho is None:
        return None
    clusters = np.arange(len(x)) if clusters is None else np.asarray(clusters)
    labels, idx = np.unique(clusters, return_inverse=True)
    members = [np.flatnonzero(idx == k) for k in range(len(labels))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        rows = np.concatenate([members[k] for k in rng.integers(0, len(labels), len(labels))])
        r = spearman(x[rows], y[rows])
        if r is not None:
            values.append(r)
    tail = (1 - level) / 2 * 100
    # every resample degenerate (e.g. one cluster of tied values): no interval, but still the ρ
    lo, hi = np.percentile(values, [tail, 100 - tail]) if values else (np.nan, np.nan)
    return {"rho": rho, "lo": float(lo), "hi": float(hi), "clusters": len(labels), "draws": len(values)}
