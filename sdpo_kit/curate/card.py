"""Data cards (Hugging Face dataset-card README.md) for partitions and whole datasets, with plots.

    sdpo data card data/dpo_en_demo.json --out data_cards/dpo_en_demo

A card is YAML front matter (parsed by `huggingface_hub.DatasetCard.load`), a table of
statistics per group (a step, or a source for a whole dataset; `sdpo_kit.stats.margin_stats`)
and PNG plots under `plots/`, drawn by the report's figure functions (`sdpo_kit.plots`,
`save_figure(**CARD)`: 700 x 400 px, the same data gives the same bytes); its text is blocks
rendered by `sdpo_kit.render`, as the report's is. A card only describes:
`sdpo data card --scored` gets its margins from `sdpo_kit.scoring.frame.score_sample`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import yaml

from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import atomic_dir, read_parquet_checked, write_text
from sdpo_kit.owner import write_owner
from sdpo_kit import plots
from sdpo_kit.curate.selection import selection_table
from sdpo_kit.signals import signal_table
from sdpo_kit.render import to_markdown
from sdpo_kit.stats import margin_stats


@dataclass
class CardConfig:
    """Write a Hugging Face data card (README.md + plots) for a whole dataset."""

    data: str = field(metadata={"help": "Preference data in any supported format, or a scored parquet.",
                                "positional": True})
    out: str = field(metadata={"help": "Directory for README.md and plots/."})
    scored: bool = field(default=False, metadata={"help": "Score the pairs with --model first (margins in the card)."})
    model: str = field(default="default", metadata={"help": "Reference model for --scored."})
    sample: int | None = field(default=None, metadata={"help": "With --scored: score only this many pairs (seeded)."})
    max_length: int | None = field(default=None, metadata={
        "help": "With --scored: the scorer's max_length (0 = no truncation); default: the scorer's (1024)."})
    seed: int = field(default=0, metadata={"help": "Seed for --sample."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --out directory."})

    def __post_init__(self):
        from sdpo_kit.scoring.frame import check_settings

        if self.sample is not None and self.sample < 1:
            raise UsageError(f"--sample must be >= 1 pair, got {self.sample}.")
        check_settings(max_length=self.max_length)

    def scorer(self):
        """The `ScoreConfig` of `--scored`: the scorer's defaults, with --max_length when given."""
        from sdpo_kit.scoring.frame import ScoreConfig

        return ScoreConfig(**({} if self.max_length is None else {"max_length": self.max_length}))


def run(cfg: CardConfig) -> Path:
    """`sdpo data card`: write the card, print where."""
    path = write_dataset_card(cfg)
    print(f"wrote {path}")
    return path


def group_stats(data: pl.DataFrame, group: str = "step") -> pl.DataFrame:
    """One row per group: pairs, margins (when scored), mean lengths and the source mix."""
    data, unit = plots.with_lengths(data)
    aggs = margin_stats("margin" if "margin" in data.columns else None, median=True)
    aggs += [pl.col(f"{c}_len").mean().alias(f"mean_{c}_{unit}") for c in plots.LENGTH_COLS]
    stats = data.group_by(group).agg(aggs).sort(group)
    if group == "source":
        return stats
    mix = (
        data.group_by(group, "source").len()
        .with_columns((pl.col("len") / pl.col("len").sum().over(group) * 100).alias("pct"))
        .sort([group, "len", "source"], descending=[False, True, False])
        .group_by(group, maintain_order=True)
        .agg(pl.format("{} {}%", "source", pl.col("pct").round(0).cast(pl.Int64)).str.join(", ").alias("sources"))
    )
    return stats.join(mix, on=group, how="left")


def _cell(v) -> str:
    """A card table cell's text: numbers to 3 decimals (NaN as n/a); the renderer escapes it (a `|`,
    newline or `<script>` stays text)."""
    if isinstance(v, float):
        return "n/a" if v != v else f"{v:.3f}"
    return str(v)


def _stats_table(stats: pl.DataFrame) -> tuple:
    return ("table", stats.columns, [[_cell(v) for v in row] for row in stats.iter_rows()])


def _bullets(lines: list[str]) -> tuple:
    """Printed lines (`curate score`/`split`) as a list block: data escaped, our own backticks kept as
    code (each line's text between backticks is a data slot, the backticks are the template's)."""
    return ("list", [("`".join(["{}"] * len(parts)), *parts) for parts in (line.split("`") for line in lines)])


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def render_card(front: dict, title: str, intro: tuple, sections: list[tuple[str, list[tuple]]]) -> str:
    """The card's README.md: YAML front matter, then the title, the intro paragraph and each
    (name, blocks) section, rendered by `sdpo_kit.render`."""
    blocks = [("h1", title), intro] + [b for name, body in sections for b in [("h2", name), *body]]
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + to_markdown(blocks)


def draw_plots(out: Path, pairs: pl.DataFrame, group: str, scored: pl.DataFrame | None, mix: pl.DataFrame,
               mix_group: str, reference: str) -> dict[str, list]:
    """plots/margin_hist.png (γ_ref per group, when scored), source_mix.png (pairs per source in each
    `mix_group`) and lengths.png (chosen/rejected lengths per group) of a card; returns what each shows
    (`plots.axes_series` per PNG name)."""
    folder, drawn = out / "plots", {}

    def per(df: pl.DataFrame, col: str) -> list:
        return sorted(df[col].unique().to_list())

    if scored is not None:
        hists = [{group: g, "margin": scored.filter(pl.col(group) == g)["margin"].drop_nulls().to_list()}
                 for g in per(scored, group)]
        drawn["margin_hist"] = plots.save_figure(
            lambda a: plots.plot_partition_margins(hists, a[0], reference=reference, group=group),
            folder / "margin_hist.png", **plots.CARD)["series"]
    bars = [{mix_group: g, "sources": dict(mix.filter(pl.col(mix_group) == g)["source"].value_counts().iter_rows())}
            for g in per(mix, mix_group)]
    drawn["source_mix"] = plots.save_figure(lambda a: plots.plot_partition_sources(bars, a[0], group=mix_group),
                                            folder / "source_mix.png", **plots.CARD)["series"]
    drawn["lengths"] = plots.save_figure(lambda a: plots.plot_lengths(pairs, a[0], group=group),
                                         folder / "lengths.png", **plots.CARD)["series"]
    return drawn


def _json_block(obj, sort_keys: bool = False) -> tuple:
    """A fenced JSON code block whose strings (source names, paths) can neither close the fence nor open
    HTML: `<`, `>`, `&` and backticks are written as \\u escapes, which JSON reads back unchanged."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys)
    for ch in "<>&`":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return ("code", "json", text)


def _provenance(scorer: dict | None, scored: bool) -> list[tuple]:
    if not scorer:
        return [("p", "Scored, but the input carries no `sdpo_kit.scorer` provenance in its parquet footer." if scored
                 else "Not scored: no reference model margins.")]
    return [("p", "Scored by `sdpo curate score`:"), _json_block(scorer, sort_keys=True)]


def _counts(counts: dict[str, int], suffix: str = "") -> list[tuple]:
    """Reason counts as list items: "`reason`: n" (+ suffix)."""
    return [("`{}`: {}" + suffix, r, n) for r, n in counts.items()]


# ---------------------------------------------------------------- partitions (written by `curate split`)

def write_partition_card(out: str | os.PathLike, parts: list[pl.DataFrame], manifest: dict) -> Path:
    """README.md + plots for a partitions dir (parts[t-1] = step t)."""
    out = Path(out)
    data = pl.concat([p.with_columns(pl.lit(t, pl.Int32).alias("step")) for t, p in enumerate(parts, 1)], how="diagonal_relaxed")
    n_steps = len(parts)
    front = {
        "pretty_name": f"sDPO partitions ({manifest['strategy']}, {n_steps} steps) of {Path(manifest['input']['path']).name}",
        "tags": ["dpo", "sdpo", "preference", "curriculum"],
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(data.height)],
        "configs": [{"config_name": "default", "data_files": [
            {"split": f"step_{t}", "path": f"step_{t}.parquet"} for t in range(1, n_steps + 1)]}],
    }
    p = manifest["params"]
    intro = ("p", "{} preference pairs from {} (sha256 `{}…`, {} rows) split into {} steps by `sdpo curate split "
             "--strategy {}` (difficulty column `{}`, seed {}). Step 1 is trained first; step t's reference is the "
             "model from step t-1. {} pairs were dropped by filters (`dropped.parquet`, column `drop_reason`).",
             data.height, manifest["input"]["path"], manifest["input"]["sha256"][:16], manifest["input"]["rows"],
             n_steps, manifest["strategy"], p["by"], manifest["seed"], manifest["dropped"]["pairs"])
    reasons = _counts(manifest["dropped"]["reasons"])
    scored = "margin" in data.columns
    draw_plots(out, data, "step", data if scored else None, data, "step", "the curation reference")
    figures = [("image", "margin histogram per step", "plots/margin_hist.png")] if scored else []
    figures += [("image", "source mix per step", "plots/source_mix.png"),
                ("image", "lengths per step", "plots/lengths.png")]
    sections = [
        ("Steps", [("p", "Margin = γ_ref = log π_ref(chosen|prompt) - log π_ref(rejected|prompt); reward accuracy = "
                         "share of pairs with γ_ref > 0."), _stats_table(group_stats(data, "step"))]),
        ("Plots", figures),
        *([("Length", _length_section(data, manifest["length"], out))] if manifest.get("length") else []),
        ("Dropped pairs", [("list", reasons)] if reasons else [("p", "None.")]),
        *([("Selection", selection_table(manifest["selection"]))] if manifest.get("selection") else []),
        *([("Difficulty signals", signal_table(manifest["signals"]))]
          if manifest.get("signals") and len(manifest["signals"]["names"]) > 1 else []),
        ("Parameters", [_json_block(p)]),
        ("Reference model", _provenance(manifest.get("scorer"), True)),
        ("Use with TRL", [("code", "python", "from datasets import load_dataset\nstep_1 = load_dataset(\"parquet\", "
                           "data_files=\"step_1.parquet\", split=\"train\")  # prompt / chosen / rejected + scores")]),
    ]
    return write_text(out / "README.md", render_card(front, front["pretty_name"], intro, sections))


def _length_section(data: pl.DataFrame, record: dict, out: Path) -> list[tuple]:
    """The "Length" section (issue 12: how much of the order is answer length; manifest["length"], written
    by `sdpo_kit.length.split_record`): ρ lines, the warning, the per-step table, the plot."""
    from sdpo_kit.length import fmt_rho, split_lines

    out_blocks = [("p", "Log length ratio = {}. Summed log-probs favour the shorter answer, so an order by summed "
                        "margin can be an order by length.", record["log_length_ratio"]),
                  _bullets(split_lines(record))]
    c = record["control_length"]
    if c:
        out_blocks.append(("p", "`--control_length`: {}. Features {}; n_knots {}, degree {}; fitted on {} pairs (R² {}); "
                                "bins {}; Spearman ρ with the log length ratio {} before, {} for the residual, {} for "
                                "the key.", c["method"], ", ".join(c["features"]), c["n_knots"], c["degree"],
                           c["fitted_pairs"], c["r2"], c.get("bins", 1), fmt_rho(c["rho_length_before"]),
                           fmt_rho(c.get("rho_length_residual")), fmt_rho(c["rho_length_after"])))
    rows = record["per_step"]
    cols = list(rows[0]) if rows else []
    out_blocks.append(("table", cols, [[_cell(r[c]) for c in cols] for r in rows]))
    if record["key"] is not None:
        plots.save_figure(lambda a: plots.plot_key_vs_length(data, a[0], record["key"]),
                          out / "plots" / "key_vs_length.png", **plots.CARD)
        out_blocks.append(("image", "ordering key against the log length ratio", "plots/key_vs_length.png"))
    return out_blocks


# ---------------------------------------------------------------- a whole dataset (`sdpo data card`)

def _parquet_schema(path: Path) -> dict:
    from sdpo_kit.io import check_parquet, reading

    check_parquet(path)
    with reading(path):
        return pl.read_parquet_schema(path)


def _reject_counts(rejects) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rejects:  # one entry per bad input row, not per pair: a short loop
        reason = r["reason"] if isinstance(r, dict) else r.reason
        counts[reason] = counts.get(reason, 0) + 1
    return dict(sorted(counts.items()))


def load_for_card(cfg: CardConfig) -> dict:
    """{pairs, scored, rows, rejects, score_rejects, scorer} for a dataset card: `pairs` = every valid
    pair, `scored` = the pairs with margins (all of them, a seeded subset, or None)."""
    from sdpo_kit.io import read_json_meta
    from sdpo_kit.runs import SCORER_KEY

    path = Path(cfg.data)
    if path.suffix == ".parquet" and path.is_file() and "margin" in _parquet_schema(path):
        # Already scored: its rejects file (if any) sits beside it.
        pairs = read_parquet_checked(path)
        rej = path.with_name(path.name.removesuffix(".parquet") + ".rejects.jsonl")
        rejects = [json.loads(line) for line in rej.read_text().splitlines()] if rej.exists() else []
        return {"pairs": pairs, "scored": pairs, "rows": pairs.height + len(rejects), "rejects": _reject_counts(rejects),
                "score_rejects": {}, "scorer": read_json_meta(path, SCORER_KEY)}
    from sdpo_kit.data import load_pairs

    loaded = load_pairs(path)
    card = {"pairs": loaded.pairs, "scored": None, "rows": loaded.rows, "rejects": _reject_counts(loaded.rejects),
            "score_rejects": {}, "scorer": None}
    if cfg.scored:
        from sdpo_kit.scoring.frame import score_sample

        card["scored"], more, card["scorer"] = score_sample(loaded.pairs, cfg.model, cfg.scorer(), cfg.sample, cfg.seed)
        card["score_rejects"] = _reject_counts(more)
    return card


def _margins_section(card: dict) -> list[tuple]:
    scored, scorer = card["scored"], card["scorer"] or {}
    n, of = scorer.get("scored_pairs", scored.height), scorer.get("of_pairs", scored.height)
    head = ("Margin = γ_ref = log π_ref(chosen|prompt) - log π_ref(rejected|prompt) under the reference model below; "
            "reward accuracy = share of pairs with γ_ref > 0; lengths in tokens as the scorer counted them "
            "(before truncation at max_length {}).")
    data = [scorer.get("max_length", "?")]
    if n < of:
        head += (" **Scored on a seeded random subset: {} of the {} valid pairs (seed {})**; "
                 "{} of them were kept by the scorer, and this section describes those only.")
        data += [n, of, scorer["sample_seed"], scored.height]
    from sdpo_kit.length import score_diagnosis

    # Issue 12: how much of each margin is answer length (what `curate score` prints), as bullets.
    lines = score_diagnosis(scored)
    per_all = scored.with_columns(pl.lit("all").alias("dataset"))
    from sdpo_kit.signals import signal_record

    signals = signal_table(signal_record(scored))  # issue 20: every difficulty signal present, side by side
    if signals:  # a bold lead-in on the section's first paragraph
        signals[0] = ("p", "**Difficulty signals.** " + signals[0][1], *signals[0][2:])
    return [("p", head, *data), _stats_table(group_stats(scored, "source")), _stats_table(group_stats(per_all, "dataset")),
            *([_bullets(lines)] if lines else []), *signals]


def write_dataset_card(cfg: CardConfig) -> Path:
    """README.md + plots for a whole dataset, grouped by source; reference margins when scored.
    One writer at a time; never over the data it describes (nor with --overwrite) or another command's folder."""
    from sdpo_kit.data.containers import list_files
    from sdpo_kit.io import folder_lock
    from sdpo_kit.owner import claim_folder

    with folder_lock(cfg.out, COMMAND):
        claim_folder(cfg.out, COMMAND, cfg.overwrite, inputs=list_files(cfg.data))
        return _write_dataset_card(cfg)


COMMAND = "sdpo data card"


def _write_dataset_card(cfg: CardConfig) -> Path:
    data, out = cfg.data, cfg.out
    card = load_for_card(cfg)
    pairs = card["pairs"]
    if pairs.height == 0:
        raise InputError(f"{data}: no valid pairs to describe (rejects: {card['rejects']})")
    front = {"pretty_name": f"Preference pairs: {Path(data).name}", "tags": ["dpo", "preference"],
             "task_categories": ["text-generation"], "size_categories": [_size_category(pairs.height)]}
    intro = ("p", "{}: {} input rows, {} valid pairs, {} rows rejected by the data layer. "
             + ("Reference-model margins: see below." if card["scored"] is not None else
                "Not scored: lengths and source mix only (`sdpo data card --scored` adds reference margins)."),
             data, card["rows"], pairs.height, sum(card["rejects"].values()))
    rejected = [("list", _counts(card["rejects"]))] if card["rejects"] else [("p", "None.")]
    if card["score_rejects"]:
        rejected.append(("list", _counts(card["score_rejects"], " (scorer, among the scored pairs)")))
    everything = pairs.with_columns(pl.lit("all").alias("dataset"))
    with atomic_dir(out, overwrite=True) as tmp:  # claim_folder decided on --overwrite
        write_owner(tmp, COMMAND, input=str(Path(data).resolve()))
        sections = [
            ("Per source", [_stats_table(group_stats(pairs, "source"))]),
            ("Whole dataset", [_stats_table(group_stats(everything, "dataset"))]),
        ]
        figures = []
        if card["scored"] is not None:
            sections.append(("Reference margins", _margins_section(card)))
            figures.append(("image", "margin histogram per source (scored pairs)", "plots/margin_hist.png"))
        draw_plots(tmp, pairs, "source", card["scored"], everything, "dataset", "the reference model")
        figures += [("image", "source mix", "plots/source_mix.png"), ("image", "lengths per source", "plots/lengths.png")]
        sections += [
            ("Plots", figures),
            ("Rejected rows", rejected),
            ("Reference model", _provenance(card["scorer"], card["scored"] is not None)),
        ]
        write_text(tmp / "README.md", render_card(front, front["pretty_name"], intro, sections))
    return Path(out) / "README.md"

