"""Split scored pairs into T partitions, easiest first: the curation half of sDPO.

    sdpo curate split scored.parquet --steps 3 --strategy easy-to-hard --out partitions/

Difficulty is the reference model's margin γ_ref = log π(y_w|x) - log π(y_l|x) (column
`margin`, or `--by` another score column such as `margin_per_token`): a large margin means the
reference already prefers the chosen answer, so the pair is easy and goes to an early step.
`by-source` is the paper's method (Kim et al. 2024): one partition per source, ordered by the
reference's reward accuracy on it (share of pairs with γ_ref > 0), highest first. `random` is
the paper's control. Every input pair lands in exactly one step or in `dropped.parquet`.
All table work is polars; the only numpy is a permutation, a searchsorted and k-means.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import (finite_json, read_json_meta, read_parquet_checked, refuse_overwriting_input,
                         write_json, write_parquet)

STRATEGIES = ("by-source", "easy-to-hard", "hard-to-easy", "random", "kmeans")
# Score columns k-means clusters on (those present); standardised so no one column dominates.
KMEANS_FEATURES = ("margin", "margin_per_token", "ref_chosen_logps_mean", "ref_rejected_logps_mean")
KMEANS_FIT_ROWS = 10_000
SCORER_KEY, SPLIT_KEY = "sdpo_kit.scorer", "sdpo_kit.split"
ROW = "__row"  # input position: the tie-breaker that makes every ordering deterministic


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
        default=None, metadata={"help": "Keep only this share of pairs with the highest `by` (Selective DPO)."}
    )
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
        if self.min_margin is not None and self.max_margin is not None and self.min_margin > self.max_margin:
            raise UsageError(f"min_margin={self.min_margin} > max_margin={self.max_margin}")

    def strata(self) -> list[str]:
        """The --stratify keys: [], ['source'], ['length'] or both."""
        return [x.strip() for x in self.stratify.split(",") if x.strip()] if self.stratify else []


@dataclass
class SplitFileConfig:
    """Order or bucket scored pairs into easy-to-hard partitions, with a manifest and a data card.

    How to split (strategy, steps, by, ...: `SplitConfig`, recorded in manifest.json) comes after these.
    """

    scored: str = field(metadata={"help": "Scored parquet (output of `sdpo curate score`).", "positional": True})
    out: str = field(metadata={"help": "Partitions directory to write."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --out directory."})


def run(cfg: SplitFileConfig, split: SplitConfig) -> dict:
    """`sdpo curate split`: write the partitions; print one line per step, the drops and the length check."""
    from sdpo_kit.escape import term

    manifest = split_file(cfg.scored, cfg.out, split, overwrite=cfg.overwrite)  # errors: the CLI answers them
    num = lambda v: "n/a (not finite)" if v is None else f"{v:.3f}"  # noqa: E731  (strict JSON: inf -> null)
    for s in manifest["steps"]:
        mix = ", ".join(f"{term(k)} {v}" for k, v in s["sources"].items())  # source names are data
        print(f"step {s['step']}: {s['pairs']} pairs, mean margin {num(s['mean_margin'])}, "
              f"reward accuracy {num(s['reward_accuracy'])} ({mix})")
    print(f"dropped: {manifest['dropped']['pairs']} {manifest['dropped']['reasons']}")
    if manifest.get("length"):
        from sdpo_kit.length import split_lines

        for line in split_lines(manifest["length"]):
            print(line)
    print(f"wrote {cfg.out}/ (step_*.parquet, dropped.parquet, manifest.json, README.md, plots/)")
    return manifest


def order_column(cfg: SplitConfig) -> str:
    """The column pairs are ordered by: `by`, or its length-controlled residual `<by>_lc`."""
    return f"{cfg.by}_lc" if cfg.control_length else cfg.by


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
    if cfg.keep_easiest is not None:
        # Rank the survivors by easiness; input order breaks ties so the cut is deterministic.
        alive = df.filter(pl.col("drop_reason").is_null()).sort([order_column(cfg), ROW], descending=[True, False])
        n_keep = round(cfg.keep_easiest * alive.height)
        cut = alive[n_keep:].select(ROW)
        df = df.with_columns(
            pl.when(pl.col(ROW).is_in(cut[ROW].implode()) & pl.col("drop_reason").is_null())
            .then(pl.lit("not_easiest"))
            .otherwise(pl.col("drop_reason"))
            .alias("drop_reason")
        )
    kept = df.filter(pl.col("drop_reason").is_null()).drop("drop_reason")
    return kept, df.filter(pl.col("drop_reason").is_not_null())


def source_order(df: pl.DataFrame) -> pl.DataFrame:
    """Per source: pairs, reward accuracy (share with γ_ref > 0) and mean margin, highest accuracy first."""
    from sdpo_kit.stats import margin_stats

    return (
        df.group_by("source").agg(margin_stats())
        .select("source", "pairs", "reward_accuracy", "mean_margin")  # the manifest's key order
        .sort(["reward_accuracy", "mean_margin", "source"], descending=[True, True, False])
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
        raise InputError(f"by-source: steps={steps} but only {len(order)} sources ({', '.join(order)})")
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
        .sort(["__mean", "__cluster"], descending=[True, False])
        .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int32).alias("step"))
    )
    return df.join(rank.select("__cluster", "step"), on="__cluster", how="left").drop("__cluster")


def resolve_steps(df: pl.DataFrame, cfg: SplitConfig) -> int:
    if cfg.steps is not None:
        return cfg.steps
    return df["source"].n_unique() if cfg.strategy == "by-source" else 2


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
            ordered = df.sort([order_column(cfg), ROW], descending=[cfg.strategy == "easy-to-hard", False])
        sizes = step_sizes(df.height, cfg.fractions or (1 / steps,) * steps)
        out = _chunk_stratified(ordered, sizes, STRATUM) if cfg.stratify else _chunk(ordered, sizes)
    return out.sort(ROW)


def _step_entry(part: pl.DataFrame, step: int) -> dict:
    from sdpo_kit.stats import margin_stats

    stats = part.select(margin_stats(median=True)).row(0, named=True)
    sources = part["source"].value_counts().sort(["count", "source"], descending=[True, False])
    return {"step": step, "file": f"step_{step}.parquet", "pairs": part.height,
            **{k: round(float(v), 6) for k, v in stats.items() if k != "pairs"},
            "sources": dict(zip(sources["source"].to_list(), sources["count"].to_list()))}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_scored(path: str | os.PathLike, cfg: SplitConfig) -> tuple[pl.DataFrame, dict | None]:
    """The scored frame and the scorer's provenance; one clear error for every way it can be wrong."""
    df = read_parquet_checked(path, "curate split takes the parquet that `sdpo curate score` writes; run it first")
    needed = ["prompt", "chosen", "rejected", "source", "margin"]
    needed += ["chosen_truncated", "rejected_truncated"] if cfg.drop_truncated else []
    needed += ["chosen_tokens", "rejected_tokens"] if cfg.control_length or "length" in cfg.strata() else []
    missing = [c for c in dict.fromkeys(needed) if c not in df.columns]
    if cfg.by not in df.columns and "margin" not in missing:  # scored, but --by names no column
        raise UsageError(f"--by {cfg.by!r}", f"no such column in {path}; numeric columns: {_numeric(df)}")
    if missing or cfg.by not in df.columns:
        raise InputError(f"{path}: missing column(s) {missing or [cfg.by]}; run `sdpo curate score` on it first")
    if not df["margin"].dtype.is_numeric():
        raise InputError(path, f"column 'margin' is {df['margin'].dtype}, not numbers: not written by "
                         "`sdpo curate score`; score the pairs again")
    if not df[cfg.by].dtype.is_numeric():
        raise UsageError(f"--by {cfg.by!r}", f"is a {df[cfg.by].dtype} column, not a score; numeric columns: {_numeric(df)}")
    for col in ("chosen_truncated", "rejected_truncated") if cfg.drop_truncated else ():
        if df[col].dtype != pl.Boolean:
            raise InputError(path, f"column {col!r} is {df[col].dtype}, expected booleans; score the pairs again")
    if df.height == 0:
        raise InputError(path, "holds no pairs")
    return df, read_json_meta(path, SCORER_KEY)


def _numeric(df: pl.DataFrame) -> str:
    return ", ".join(c for c, t in df.schema.items() if t.is_numeric()) or "none"


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


STRATUM = "__stratum"


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


def split_file(path: str | os.PathLike, out: str | os.PathLike, cfg: SplitConfig, overwrite: bool = False) -> dict:
    """Split a scored parquet into `out/` (steps, dropped, manifest, card, plots); returns the manifest."""
    out = Path(out)
    refuse_overwriting_input([path], out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    df, scorer = read_scored(path, cfg)
    control: dict = {}
    parts, dropped = split_frame(df, cfg, control)
    params = {k: v for k, v in asdict(cfg).items() if k not in ("strategy", "seed")}
    params["steps"] = len(parts)
    params["fractions"] = list(cfg.fractions) if cfg.fractions else None
    if cfg.strategy == "by-source":
        params["source_order"] = source_order(pl.concat(parts)).to_dicts()
    reasons = dropped["drop_reason"].value_counts().sort("drop_reason")
    manifest = {
        "strategy": cfg.strategy,
        "params": params,
        "seed": cfg.seed,
        "steps": [_step_entry(p, t + 1) for t, p in enumerate(parts)],
        "dropped": {"file": "dropped.parquet", "pairs": dropped.height,
                    "reasons": dict(zip(reasons["drop_reason"].to_list(), reasons["count"].to_list()))},
        "input": {"path": str(path), "sha256": file_sha256(path), "rows": df.height},
        "scorer": scorer,
    }
    manifest["length"] = _length_record(parts, cfg, control.get("control_length"))
    # Strict JSON: an inf/nan statistic (e.g. an infinite margin) becomes null, and the manifest says how many.
    manifest, non_finite = finite_json(manifest)
    manifest["non_finite_values"] = non_finite
    meta = {SPLIT_KEY: json.dumps({"strategy": cfg.strategy, "params": params, "seed": cfg.seed}, sort_keys=True)}
    if scorer is not None:
        meta[SCORER_KEY] = json.dumps(scorer, sort_keys=True)
    _write_outputs(out, parts, dropped, manifest, meta, overwrite)
    return manifest


def _length_record(parts: list[pl.DataFrame], cfg: SplitConfig, control: dict | None) -> dict | None:
    """manifest["length"] (sdpo_kit.length.split_record); None when the input has no token counts."""
    from sdpo_kit import length

    data = pl.concat([p.with_columns(pl.lit(t, pl.Int32).alias("step")) for t, p in enumerate(parts, 1)],
                     how="diagonal_relaxed")
    if not length.has_lengths(data):
        return None
    key = None if cfg.strategy in ("by-source", "random") else order_column(cfg)
    return length.split_record(data, key, control)


def _write_outputs(out: Path, parts, dropped, manifest: dict, meta: dict, overwrite: bool) -> None:
    """Write everything into a sibling temp dir, then swap it in: a crash leaves `out` untouched."""
    from sdpo_kit.io import atomic_dir
    from sdpo_kit.curate.card import write_partition_card

    with atomic_dir(out, overwrite) as tmp:
        for t, part in enumerate(parts, start=1):
            write_parquet(tmp / f"step_{t}.parquet", part, metadata={**meta, "sdpo_kit.step": str(t)})
        write_parquet(tmp / "dropped.parquet", dropped, metadata=meta)
        write_json(tmp / "manifest.json", manifest)
        write_partition_card(tmp, parts, manifest)
