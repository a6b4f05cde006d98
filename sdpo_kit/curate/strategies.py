"""The split strategies on a frame of scored pairs: filter, order, chunk (stratified or not), assign steps.

    python -c "import polars as pl; from sdpo_kit.curate.strategies import SplitConfig, split_frame; \
print([p.height for p in split_frame(pl.read_parquet('scored.parquet'), SplitConfig(steps=3))[0]])"

`SplitConfig` holds how to split; no file is read or written here (that is `split.py`, the
`sdpo curate split` job). Easiness is the score column `by` (default `margin`, γ_ref; or its
length-controlled residual `<by>_lc`): `easy-to-hard`/`hard-to-easy` sort by it and cut into
step sizes, `random` permutes with the seed, `by-source` orders sources by the reference's
reward accuracy (Kim et al. 2024), `kmeans` clusters on the score features and orders clusters
by mean easiness. Every ordering breaks ties
by input position (ROW), so a split is deterministic. All table work is polars; the only numpy
is a permutation, a searchsorted and k-means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from sdpo_kit.curate.selection import EASIER, higher_is_easier, mark_not_easiest
from sdpo_kit.errors import InputError, UsageError

STRATEGIES = ("by-source", "easy-to-hard", "hard-to-easy", "random", "kmeans")
# Score columns k-means clusters on (those present); standardised so no one column dominates.
KMEANS_FEATURES = ("margin", "margin_per_token", "ref_chosen_logps_mean", "ref_rejected_logps_mean")
KMEANS_FIT_ROWS = 10_000
ROW = "__row"  # input position: the tie-breaker that makes every ordering deterministic
STRATUM = "__stratum"  # the --stratify key of a pair (source, length bucket, or both)


@dataclass
class SplitConfig:
    """How to partition scored pairs; see the module docstring for what each strategy means."""

    strategy: str = field(default="easy-to-hard", metadata={"help": f"One of {', '.join(STRATEGIES)}."})
    steps: int | None = field(
        default=None,
        metadata={"help": "Number of partitions T. Default: one per source for by-source, else len(fractions) or 2."},
    )
    by: str = field(default="margin", metadata={"help": "Score column that measures easiness (higher = easier)."})
    fractions: tuple[float, ...] | None = field(
        default=None, metadata={"help": "Share of pairs per step (easy-to-hard, hard-to-easy, random); sums to 1."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for random and kmeans."})
    stratify: str | None = field(
        default=None, metadata={"help": "'source', 'length' or 'source,length': keep each step's source mix and/or "
                                        "length mix (quantile buckets of ln(chosen/rejected tokens)) equal to the whole's."}
    )
    control_length: bool = field(default=False, metadata={
        "help": "Order by the residual of `by` after a spline fit on the answer lengths (sdpo_kit.length): "
                "difficulty that is not length in disguise. The key is stored as column `<by>_lc`."})
    control_knots: int = field(default=8, metadata={
        "help": "control_length: spline knots per length feature (at quantiles); 2 with degree 1 = a straight line."})
    control_degree: int = field(default=3, metadata={"help": "control_length: spline degree (3 = cubic)."})
    control_bins: int = field(default=20, metadata={
        "help": "control_length: the key is the residual's percentile rank within this many equal-count bins of "
                "the log length ratio (at most pairs/10); 1 = the residual's own order."})
    length_buckets: int = field(default=5, metadata={
        "help": "Quantile buckets of the log length ratio for stratify='length'."})
    keep_easiest: float | None = field(
        default=None, metadata={"help": "Keep only this share of pairs, the easiest by `by` (Selective DPO); any "
                                "strategy then orders or shuffles the kept pairs."}
    )
    keep_per_source: bool = field(default=False, metadata={
        "help": "keep_easiest within each source (the easiest share of every source), so no source is wiped out."})
    easier: str = field(default="auto", metadata={
        "help": "Which end of `by` is easy: `higher` (margins), `lower` (losses: val_loss); auto = lower for a "
                "column named *loss*, else higher."})
    drop_truncated: bool = field(default=False, metadata={"help": "Drop pairs whose chosen or rejected was truncated."})
    min_margin: float | None = field(default=None, metadata={"help": "Drop pairs whose `by` is below this."})
    max_margin: float | None = field(default=None, metadata={"help": "Drop pairs whose `by` is above this."})

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise UsageError(f"strategy={self.strategy!r}: expected one of {STRATEGIES}")
        if self.fractions is not None:
            self.fractions = tuple(float(f) for f in self.fractions)
            if any(f <= 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
                raise UsageError(f"fractions={self.fractions}: need positive shares summing to 1")
            if self.steps is None:
                self.steps = len(self.fractions)
            if len(self.fractions) != self.steps:
                raise UsageError(f"fractions={self.fractions} has {len(self.fractions)} shares for steps={self.steps}")
            if self.strategy in ("by-source", "kmeans"):
                raise UsageError(f"fractions={self.fractions}: {self.strategy} sizes steps by source/cluster")
        if self.steps is not None and self.steps < 1:
            raise UsageError(f"steps={self.steps}: need at least 1")
        if self.stratify is not None and (not self.strata() or not set(self.strata()) <= {"source", "length"}):
            raise UsageError(f"stratify={self.stratify!r}: expected 'source', 'length' or 'source,length'")
        if self.control_bins < 1:
            raise UsageError(f"control_bins={self.control_bins}: need at least 1")
        if self.control_knots < 2 or self.control_degree < 1:
            raise UsageError(f"control_knots={self.control_knots}, control_degree={self.control_degree}: "
                             "need at least 2 knots and degree 1")
        if self.length_buckets < 1:
            raise UsageError(f"length_buckets={self.length_buckets}: need at least 1")
        if self.control_length and self.strategy in ("by-source", "random"):
            raise UsageError(f"control_length orders pairs by a length-controlled `by`; strategy={self.strategy!r} "
                             "does not order by `by`")
        if self.stratify and self.strategy in ("by-source", "kmeans"):
            raise UsageError(f"stratify={self.stratify!r} makes no sense with strategy={self.strategy!r}")
        if self.keep_easiest is not None and not 0 < self.keep_easiest <= 1:
            raise UsageError(f"keep_easiest={self.keep_easiest}: need a share in (0, 1]")
        if self.keep_per_source and self.keep_easiest is None:
            raise UsageError("keep_per_source needs --keep_easiest (the share kept in each source)")
        if self.easier not in EASIER:
            raise UsageError(f"easier={self.easier!r}: expected one of {EASIER}")
        if self.min_margin is not None and self.max_margin is not None and self.min_margin > self.max_margin:
            raise UsageError(f"min_margin={self.min_margin} > max_margin={self.max_margin}")

    def strata(self) -> list[str]:
        """The --stratify keys: [], ['source'], ['length'] or both."""
        return [x.strip() for x in self.stratify.split(",") if x.strip()] if self.stratify else []


def split_frame(df: pl.DataFrame, cfg: SplitConfig, record: dict | None = None) -> tuple[list[pl.DataFrame], pl.DataFrame]:
    """The library core: (parts, dropped); parts[t-1] is step t, all rows in input order.
    `record`, if given, receives the --control_length fit under "control_length"."""
    df, control = with_length_columns(df.with_row_index(ROW), cfg)
    if record is not None:
        record["control_length"] = control
    kept, dropped = filter_pairs(df, cfg)
    assigned = assign_steps(kept, cfg)
    steps = resolve_steps(kept, cfg)
    parts = [assigned.filter(pl.col("step") == t).drop(ROW, "step", STRATUM, strict=False) for t in range(1, steps + 1)]
    return parts, dropped.drop(ROW, STRATUM, strict=False)


def with_length_columns(df: pl.DataFrame, cfg: SplitConfig) -> tuple[pl.DataFrame, dict | None]:
    """(df, fit record): add `<by>_lc` (--control_length: fitted on every input pair, before any
    filter) and the stratum column of --stratify (source, length bucket, or both)."""
    from sdpo_kit import length

    record = None
    if cfg.control_length:
        resid, record = length.length_key(df, cfg.by, n_knots=cfg.control_knots, degree=cfg.control_degree,
                                          bins=cfg.control_bins)
        df = df.with_columns(pl.Series(order_column(cfg), resid, dtype=pl.Float64).fill_nan(None))
    strata = cfg.strata()
    if not strata:
        return df, record
    parts = []
    if "source" in strata:
        parts.append(pl.col("source").cast(pl.String))
    if "length" in strata:
        if not length.has_lengths(df):
            raise InputError("stratify=length needs the scorer's chosen_tokens/rejected_tokens columns")
        buckets = length.length_buckets(df, cfg.length_buckets)
        df = df.with_columns(pl.Series("__bucket", buckets))
        parts.append(pl.format("len{}", pl.col("__bucket")))
    return df.with_columns(pl.concat_str(parts, separator="|").alias(STRATUM)).drop("__bucket", strict=False), record


def order_column(cfg: SplitConfig) -> str:
    """The column pairs are ordered by: `by`, or its length-controlled residual `<by>_lc`."""
    return f"{cfg.by}_lc" if cfg.control_length else cfg.by


def higher_easier(cfg: SplitConfig) -> bool:
    """Whether a higher `by` is easier (margins) or harder (losses such as val_loss): `--easier`."""
    return higher_is_easier(cfg.by, cfg.easier)


def filter_pairs(df: pl.DataFrame, cfg: SplitConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(kept, dropped): dropped carries `drop_reason`, the first filter that removed the pair."""
    score = pl.col(cfg.by)
    reason = pl.when(score.is_null() | score.is_nan()).then(pl.lit("missing_score"))
    if cfg.drop_truncated:
        reason = reason.when(pl.col("chosen_truncated") | pl.col("rejected_truncated")).then(pl.lit("truncated"))
    if cfg.min_margin is not None:
        reason = reason.when(score < cfg.min_margin).then(pl.lit(f"below_min_{cfg.by}"))
    if cfg.max_margin is not None:
        reason = reason.when(score > cfg.max_margin).then(pl.lit(f"above_max_{cfg.by}"))
    df = df.with_columns(reason.otherwise(pl.lit(None, pl.String)).alias("drop_reason"))
    if cfg.keep_easiest is not None:  # before any strategy: `random` then shuffles the kept pairs
        df = mark_not_easiest(df, order_column(cfg), cfg.keep_easiest, cfg.keep_per_source, higher_easier(cfg),
                              ROW)
    kept = df.filter(pl.col("drop_reason").is_null()).drop("drop_reason")
    return kept, df.filter(pl.col("drop_reason").is_not_null())


def source_order(df: pl.DataFrame) -> pl.DataFrame:
    """Per source: pairs, reward accuracy (share with γ_ref > 0) and mean margin, highest accuracy first."""
    from sdpo_kit.stats import margin_stats

    return (
        df.group_by("source").agg(margin_stats())
        .select("source", "pairs", "reward_accuracy", "mean_margin")  # the manifest's key order
        # a NaN mean (a non-finite margin) sorts as hardest, never as the easiest source
        .sort([pl.col("reward_accuracy"), pl.col("mean_margin").fill_nan(None), pl.col("source")],
              descending=[True, True, False], nulls_last=True)
    )


def step_sizes(n: int, fractions: tuple[float, ...]) -> list[int]:
    """Pairs per step: cumulative rounding, so sizes sum to n exactly."""
    bounds = [round(n * c) for c in np.cumsum(fractions)]
    bounds[-1] = n
    return list(np.diff([0, *bounds]).tolist())


def _chunk(ordered: pl.DataFrame, sizes: list[int]) -> pl.DataFrame:
    """Give the first sizes[0] rows step 1, the next sizes[1] step 2, ... (ordered is in step order)."""
    if min(sizes) == 0:
        raise InputError(f"step sizes {sizes} for {ordered.height} pairs: a step would be empty")
    pos = np.arange(ordered.height)
    step = np.searchsorted(np.cumsum(sizes), pos, side="right") + 1
    return ordered.with_columns(pl.Series("step", step, dtype=pl.Int32))


def stratified_counts(per_source: dict[str, int], sizes: list[int]) -> dict[str, list[int]]:
    """Pairs of each source per step: row sums = source sizes, column sums = step sizes, and every
    cell within one pair of its exact share n_s * m_t / N (controlled rounding).

    Start from the floors; the leftover pairs of each source (fewer than T) go one per step to the
    steps still missing the most pairs (Gale-Ryser greedy, which always completes a realisable table).
    """
    names = sorted(per_source)
    exact = np.outer([per_source[n] for n in names], sizes) / sum(sizes)
    table = np.floor(exact).astype(np.int64)
    row_need = np.array([per_source[n] for n in names]) - table.sum(1)
    col_need = np.array(sizes) - table.sum(0)
    frac = exact - table
    for i in np.argsort(-row_need, kind="stable"):
        cols = np.lexsort((-frac[i], -col_need))[: row_need[i]]  # most-needed steps, then largest remainder
        if len(cols) and col_need[cols].min() <= 0:
            raise AssertionError(f"controlled rounding failed for {per_source} over {sizes}")
        table[i, cols] += 1
        col_need[cols] -= 1
    return {n: table[i].tolist() for i, n in enumerate(names)}


def _chunk_stratified(ordered: pl.DataFrame, sizes: list[int], col: str = "source") -> pl.DataFrame:
    """Per stratum (`col`: the source, or a length bucket), its first k_1 pairs (in `ordered`'s order)
    go to step 1, the next k_2 to step 2, ..."""
    if min(sizes) == 0:
        raise InputError(f"step sizes {sizes} for {ordered.height} pairs: a step would be empty")
    counts = stratified_counts(dict(ordered[col].value_counts().iter_rows()), sizes)
    source = ordered[col].to_numpy()
    rank = ordered.select(pl.int_range(pl.len()).over(col))[:, 0].to_numpy()
    step = np.empty(ordered.height, dtype=np.int32)
    for name, k in counts.items():  # one vectorised pass per source, never per pair
        mask = source == name
        step[mask] = np.searchsorted(np.cumsum(k), rank[mask], side="right") + 1
    return ordered.with_columns(pl.Series("step", step, dtype=pl.Int32))


def _by_source(df: pl.DataFrame, steps: int) -> pl.DataFrame:
    order = source_order(df)["source"].to_list()
    if steps > len(order):
        names = ", ".join(order[:8]) + (", ..." if len(order) > 8 else "")
        raise InputError(f"by-source: steps={steps} but only {len(order)} sources ({names})")
    # Neighbouring sources in accuracy order share a step when there are fewer steps than sources.
    groups = np.array_split(np.arange(len(order)), steps)
    mapping = pl.DataFrame(
        {"source": order, "step": np.concatenate([[i + 1] * len(g) for i, g in enumerate(groups)])},
        schema={"source": pl.String, "step": pl.Int32},
    )
    return df.join(mapping, on="source", how="left")


def _kmeans(df: pl.DataFrame, cfg: SplitConfig, steps: int) -> pl.DataFrame:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    # With control_length only the length-controlled key: the raw margins would bring length back.
    extra = [] if cfg.control_length else [c for c in KMEANS_FEATURES if c in df.columns]
    cols = list(dict.fromkeys([order_column(cfg), *extra]))
    cols = [c for c in cols if df[c].null_count() == 0 and not df[c].is_nan().any()]
    x = df.select(cols).to_numpy().astype(np.float64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    # Fit on a seeded sample of at most KMEANS_FIT_ROWS (k-means on a few score features needs no
    # more to place T centres), then label every pair: keeps 100k pairs well under a second.
    fit = np.sort(np.random.default_rng(cfg.seed).permutation(len(x))[:KMEANS_FIT_ROWS])
    # One thread: on a few features OpenMP's spin-waiting costs seconds on a busy machine.
    with threadpool_limits(1):
        labels = KMeans(n_clusters=steps, n_init=4, random_state=cfg.seed).fit(x[fit]).predict(x)
    df = df.with_columns(pl.Series("__cluster", labels, dtype=pl.Int32))
    # Clusters become steps in order of mean easiness, easiest first.
    rank = (
        df.group_by("__cluster")
        .agg(pl.col(order_column(cfg)).mean().alias("__mean"))
        .sort(["__mean", "__cluster"], descending=[higher_easier(cfg), False])
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).alias("step"))
    )
    return df.join(rank.select("__cluster", "step"), on="__cluster", how="left").drop("__cluster")


MAX_SOURCE_STEPS = 32  # by-source without --steps: one step per source; the paper used a handful


def resolve_steps(df: pl.DataFrame, cfg: SplitConfig) -> int:
    if cfg.steps is not None:
        return cfg.steps
    if cfg.strategy != "by-source":
        return 2
    n = df["source"].n_unique()
    if n > MAX_SOURCE_STEPS:  # each step is a whole training run of its own: 10,000 sources are not a plan
        raise UsageError("--strategy by-source", f"{n:,} distinct sources would make {n:,} training steps "
                         f"(at most {MAX_SOURCE_STEPS} without --steps): pass --steps N to let neighbouring "
                         "sources share a step, or use --strategy easy-to-hard --stratify source")
    return n


def assign_steps(df: pl.DataFrame, cfg: SplitConfig) -> pl.DataFrame:
    """`df` (with ROW) plus an Int32 `step` column in 1..T, back in input order."""
    steps = resolve_steps(df, cfg)
    if df.height < steps:
        raise InputError(f"{df.height} pairs left after filtering cannot fill steps={steps}")
    if cfg.strategy == "by-source":
        out = _by_source(df, steps)
    elif cfg.strategy == "kmeans":
        out = _kmeans(df, cfg, steps)
    else:
        if cfg.strategy == "random":
            perm = np.random.default_rng(cfg.seed).permutation(df.height)
            ordered = df.with_columns(pl.Series("__key", perm)).sort("__key").drop("__key")
        else:
            easy_first = cfg.strategy == "easy-to-hard"
            ordered = df.sort([order_column(cfg), ROW], descending=[easy_first == higher_easier(cfg), False])
        sizes = step_sizes(df.height, cfg.fractions or (1 / steps,) * steps)
        out = _chunk_stratified(ordered, sizes, STRATUM) if cfg.stratify else _chunk(ordered, sizes)
    return out.sort(ROW)
