"""Data cards (Hugging Face dataset-card README.md) for partitions and whole datasets, with plots.

    sdpo data card data/dpo_en_demo.json --out data_cards/dpo_en_demo

A card is YAML front matter (parsed by `huggingface_hub.DatasetCard.load`), a table of
statistics per group (a step, or a source for a whole dataset) and PNG plots under `plots/`.
Each plot function has the signature `plot_x(data, ax, group=...) -> Axes` over a polars
frame with a `group` column, so the report can reuse them for partition statistics.
PNGs are written without a Software/date stamp, so the same data gives the same bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from sdpo_kit.escape import md_cell, mpl_label
from sdpo_kit.errors import InputError
from sdpo_kit.io import atomic_dir, atomic_path, read_parquet_checked, refuse_overwriting_input, write_text  # noqa: F401

LENGTH_COLS = ("prompt", "chosen", "rejected")


def _text_len(df: pl.DataFrame, col: str) -> pl.Expr:
    """Characters of a column that is either a string or a list of {role, content} messages."""
    if df.schema[col] == pl.String:
        return pl.col(col).str.len_chars()
    return pl.col(col).list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()


def with_lengths(df: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """`df` plus `{prompt,chosen,rejected}_len`: token counts when scored, else characters."""
    if all(f"{c}_tokens" in df.columns for c in LENGTH_COLS):
        return df.with_columns(pl.col(f"{c}_tokens").alias(f"{c}_len") for c in LENGTH_COLS), "tokens"
    return df.with_columns(_text_len(df, c).cast(pl.Int64).alias(f"{c}_len") for c in LENGTH_COLS), "chars"


def group_stats(data: pl.DataFrame, group: str = "step") -> pl.DataFrame:
    """One row per group: pairs, margins (when scored), mean lengths and the source mix."""
    data, unit = with_lengths(data)
    aggs = [pl.len().alias("pairs")]
    if "margin" in data.columns:
        aggs += [
            pl.col("margin").mean().alias("mean_margin"),
            pl.col("margin").median().alias("median_margin"),
            (pl.col("margin") > 0).mean().alias("reward_accuracy"),
        ]
    aggs += [pl.col(f"{c}_len").mean().alias(f"mean_{c}_{unit}") for c in LENGTH_COLS]
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


def plot_margin_hist(data: pl.DataFrame, ax, group: str = "step", column: str = "margin"):
    """Density of `column` per group on shared bins (1st-99th percentile, so outliers do not squash it)."""
    values = data[column].drop_nulls().drop_nans().to_numpy()
    values = values[np.isfinite(values)]  # an inf margin has no place on an axis (manifests count it)
    lo, hi = np.percentile(values, [1, 99]) if len(values) else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 41)
    for name in sorted(data[group].unique().to_list()):
        x = data.filter(pl.col(group) == name)[column].drop_nulls().drop_nans().to_numpy()
        x = x[np.isfinite(x)]
        ax.hist(np.clip(x, lo, hi), bins=bins, density=True, histtype="step", linewidth=1.5,
                label=mpl_label(f"{group} {name}"))
    ax.axvline(0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(f"{column} (γ_ref, clipped to 1st-99th pct)" if column == "margin" else column)
    ax.set_ylabel("density")
    ax.set_title(mpl_label(f"{column} per {group}"))
    ax.legend(fontsize=8)
    return ax


def plot_source_mix(data: pl.DataFrame, ax, group: str = "step"):
    """Stacked horizontal bars: each group's share of pairs from each source."""
    counts = data.group_by(group, "source").len().sort(group, "source")
    groups = sorted(counts[group].unique().to_list())
    left = np.zeros(len(groups))
    sources = sorted(counts["source"].unique().to_list())
    totals = [counts.filter(pl.col(group) == g)["len"].sum() for g in groups]
    for source in sources:
        sub = counts.filter(pl.col("source") == source)
        n = dict(zip(sub[group].to_list(), sub["len"].to_list()))
        share = np.array([n.get(g, 0) / t for g, t in zip(groups, totals)])
        bars = ax.barh([mpl_label(g) for g in groups], share, left=left, label=mpl_label(source))
        ax.bar_label(bars, labels=[f"{x:.0%}" if x >= 0.06 else "" for x in share], label_type="center", fontsize=7)
        left += share
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of pairs")
    ax.set_ylabel(group)
    ax.invert_yaxis()
    ax.set_title(f"source mix per {group}")
    # Below the axes, so the legend never hides a bar.
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(len(sources), 5), frameon=False)
    return ax


def plot_lengths(data: pl.DataFrame, ax, group: str = "step"):
    """Box plots of chosen and rejected lengths per group (tokens when scored, else characters)."""
    data, unit = with_lengths(data)
    groups = sorted(data[group].unique().to_list())
    for i, (col, color) in enumerate((("chosen_len", "tab:green"), ("rejected_len", "tab:red"))):
        xs = [data.filter(pl.col(group) == g)[col].to_numpy() for g in groups]
        pos = np.arange(len(groups)) * 3 + i
        box = ax.boxplot(xs, positions=pos, widths=0.8, showfliers=False, patch_artist=True)
        for patch in box["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        ax.plot([], [], color=color, linewidth=6, alpha=0.5, label=col.removesuffix("_len"))
    ax.set_xticks(np.arange(len(groups)) * 3 + 0.5, [mpl_label(g) for g in groups])
    ax.set_xlabel(group)
    ax.set_ylabel(f"length ({unit})")
    ax.set_title(f"chosen / rejected length per {group}")
    ax.legend(fontsize=8)
    return ax


def save_plot(plot, data: pl.DataFrame, path: Path, **kw) -> Path:
    """Draw one plot function into a fresh figure and write a deterministic PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    plot(data, ax, **kw)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return path


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _markdown_table(stats: pl.DataFrame) -> str:
    def fmt(v):  # source names and other data strings are escaped: a `|`, newline or `<script>` stays text
        return f"{v:.3f}" if isinstance(v, float) else md_cell(v)

    head = "| " + " | ".join(md_cell(c) for c in stats.columns) + " |\n|" + "---|" * len(stats.columns) + "\n"
    return head + "".join("| " + " | ".join(fmt(v) for v in row) + " |\n" for row in stats.iter_rows())


def render_card(front: dict, title: str, intro: str, sections: list[tuple[str, str]]) -> str:
    body = "".join(f"\n## {name}\n\n{text.rstrip()}\n" for name, text in sections)
    return ("---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True)
            + f"---\n\n# {md_cell(title)}\n\n{intro}\n{body}")


def _plots_section(data: pl.DataFrame, out: Path, group: str, mix_group: str) -> str:
    plots = out / "plots"
    lines = []
    if "margin" in data.columns:
        save_plot(plot_margin_hist, data, plots / "margin_hist.png", group=group)
        lines.append(f"![margin histogram per {group}](plots/margin_hist.png)")
    save_plot(plot_source_mix, data, plots / "source_mix.png", group=mix_group)
    save_plot(plot_lengths, data, plots / "lengths.png", group=group)
    lines += [f"![source mix per {mix_group}](plots/source_mix.png)", f"![lengths per {group}](plots/lengths.png)"]
    return "\n\n".join(lines)


def _json_block(obj, sort_keys: bool = False) -> str:
    """A fenced JSON block whose strings (source names, paths) can neither close the fence nor open
    HTML: `<`, `>`, `&` and backticks are written as \\u escapes, which JSON reads back unchanged."""
    text = json.dumps(obj, indent=2, sort_keys=sort_keys)
    for ch in "<>&`":
        text = text.replace(ch, f"\\u{ord(ch):04x}")
    return "```json\n" + text + "\n```"


def _provenance(scorer: dict | None, scored: bool) -> str:
    if not scorer:
        return ("Scored, but the input carries no `sdpo_kit.scorer` provenance in its parquet footer." if scored
                else "Not scored: no reference model margins.")
    return "Scored by `sdpo curate score`:\n\n" + _json_block(scorer, sort_keys=True)


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
    intro = (
        f"{data.height} preference pairs from {md_cell(manifest['input']['path'])} (sha256 `{manifest['input']['sha256'][:16]}…`, "
        f"{manifest['input']['rows']} rows) split into {n_steps} steps by `sdpo curate split --strategy {manifest['strategy']}` "
        f"(difficulty column `{p['by']}`, seed {manifest['seed']}). Step 1 is trained first; step t's reference is the model "
        f"from step t-1. {manifest['dropped']['pairs']} pairs were dropped by filters (`dropped.parquet`, column `drop_reason`)."
    )
    reasons = manifest["dropped"]["reasons"]
    dropped = "\n".join(f"- `{r}`: {n}" for r, n in reasons.items()) or "None."
    sections = [
        ("Steps", "Margin = γ_ref = log π_ref(chosen|prompt) - log π_ref(rejected|prompt); reward accuracy = share "
                  "of pairs with γ_ref > 0.\n\n" + _markdown_table(group_stats(data, "step"))),
        ("Plots", _plots_section(data, out, "step", "step")),
        *_length_section(data, manifest, out),
        ("Dropped pairs", dropped),
        ("Parameters", _json_block(p)),
        ("Reference model", _provenance(manifest.get("scorer"), True)),
        ("Use with TRL", "```python\nfrom datasets import load_dataset\nstep_1 = load_dataset(\"parquet\", "
                         "data_files=\"step_1.parquet\", split=\"train\")  # prompt / chosen / rejected + scores\n```"),
    ]
    return write_text(out / "README.md", render_card(front, front["pretty_name"], intro, sections))


def _length_section(data: pl.DataFrame, manifest: dict, out: Path) -> list[tuple[str, str]]:
    """The "Length" section (issue 12: how much of the order is answer length), when lengths are known."""
    if not manifest.get("length"):
        return []
    from sdpo_kit.curate.length import card_section

    return [("Length", card_section(data, manifest["length"], out))]


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


def load_for_card(data: str | os.PathLike, scored: bool, model: str, sample: int | None, max_length: int | None,
                  seed: int) -> dict:
    """{pairs, scored, rows, rejects, score_rejects, scorer} for a dataset card: `pairs` = every valid
    pair, `scored` = the pairs with margins (all of them, a seeded subset, or None)."""
    from sdpo_kit.io import read_json_meta

    path = Path(data)
    if path.suffix == ".parquet" and path.is_file() and "margin" in _parquet_schema(path):
        # Already scored: its rejects file (if any) sits beside it.
        pairs = read_parquet_checked(path)
        rej = path.with_name(path.name.removesuffix(".parquet") + ".rejects.jsonl")
        rejects = [json.loads(line) for line in rej.read_text().splitlines()] if rej.exists() else []
        return {"pairs": pairs, "scored": pairs, "rows": pairs.height + len(rejects), "rejects": _reject_counts(rejects),
                "score_rejects": {}, "scorer": read_json_meta(path, "sdpo_kit.scorer")}
    from sdpo_kit.curate.data import load_pairs

    loaded = load_pairs(path)
    card = {"pairs": loaded.pairs, "scored": None, "rows": loaded.rows, "rejects": _reject_counts(loaded.rejects),
            "score_rejects": {}, "scorer": None}
    if scored:
        card["scored"], more, card["scorer"] = _score(loaded.pairs, model, sample, max_length, seed)
        card["score_rejects"] = _reject_counts(more)
    return card


def _score(pairs: pl.DataFrame, model: str, sample: int | None, max_length: int | None, seed: int):
    from sdpo_kit.models import load_model
    from sdpo_kit.curate.score import ScoreConfig, provenance, score_frame

    total = pairs.height
    if sample is not None and sample < total:
        # A seeded sample, kept in input order so the card is reproducible.
        pairs = pairs.with_row_index("__i").sample(sample, seed=seed).sort("__i").drop("__i")
    cfg = ScoreConfig(**({"max_length": max_length} if max_length else {}))
    m, tok = load_model(model)
    scored, rejects = score_frame(pairs, m, tok, cfg)
    scorer = {**provenance(m, tok, cfg), "model_arg": str(model), "scored_pairs": pairs.height, "of_pairs": total,
              "sample_seed": seed if pairs.height < total else None}
    return scored, list(rejects), scorer


def _margins_section(card: dict) -> str:
    scored, scorer = card["scored"], card["scorer"] or {}
    n, of = scorer.get("scored_pairs", scored.height), scorer.get("of_pairs", scored.height)
    head = ("Margin = γ_ref = log π_ref(chosen|prompt) - log π_ref(rejected|prompt) under the reference model below; "
            "reward accuracy = share of pairs with γ_ref > 0; lengths in tokens as the scorer counted them "
            f"(before truncation at max_length {scorer.get('max_length', '?')}).")
    if n < of:
        head += (f" **Scored on a seeded random subset: {n} of the {of} valid pairs (seed {scorer['sample_seed']})**; "
                 f"{scored.height} of them were kept by the scorer, and this section describes those only.")
    per_all = scored.with_columns(pl.lit("all").alias("dataset"))
    return (head + "\n\n" + _markdown_table(group_stats(scored, "source")) + "\n"
            + _markdown_table(group_stats(per_all, "dataset")) + _length_lines(scored))


def _length_lines(scored: pl.DataFrame) -> str:
    """Issue 12: how much of each margin is answer length (what `curate score` prints), as bullets."""
    from sdpo_kit.escape import md_cell
    from sdpo_kit.curate.length import score_diagnosis

    lines = score_diagnosis(scored)
    return "".join(f"\n- {md_cell(line).replace(chr(92) + '`', '`')}" for line in lines) + ("\n" if lines else "")


def write_dataset_card(data: str | os.PathLike, out: str | os.PathLike, scored: bool = False, model: str = "default",
                       sample: int | None = None, max_length: int | None = None, seed: int = 0,
                       overwrite: bool = False) -> Path:
    """README.md + plots for a whole dataset, grouped by source; reference margins when scored."""
    from sdpo_kit.curate.data.containers import list_files

    refuse_overwriting_input(list_files(data), out)  # --overwrite must never delete the data it describes
    card = load_for_card(data, scored, model, sample, max_length, seed)
    pairs = card["pairs"]
    if pairs.height == 0:
        raise InputError(f"{data}: no valid pairs to describe (rejects: {card['rejects']})")
    front = {"pretty_name": f"Preference pairs: {Path(data).name}", "tags": ["dpo", "preference"],
             "task_categories": ["text-generation"], "size_categories": [_size_category(pairs.height)]}
    intro = (f"{md_cell(data)}: {card['rows']} input rows, {pairs.height} valid pairs, "
             f"{sum(card['rejects'].values())} rows rejected by the data layer. "
             + ("Reference-model margins: see below." if card["scored"] is not None else
                "Not scored: lengths and source mix only (`sdpo data card --scored` adds reference margins)."))
    rejected = "\n".join(f"- `{r}`: {n}" for r, n in card["rejects"].items()) or "None."
    rejected += "".join(f"\n- `{r}`: {n} (scorer, among the scored pairs)" for r, n in card["score_rejects"].items())
    everything = pairs.with_columns(pl.lit("all").alias("dataset"))
    with atomic_dir(out, overwrite) as tmp:
        sections = [
            ("Per source", _markdown_table(group_stats(pairs, "source"))),
            ("Whole dataset", _markdown_table(group_stats(everything, "dataset"))),
        ]
        plots = []
        if card["scored"] is not None:
            sections.append(("Reference margins", _margins_section(card)))
            save_plot(plot_margin_hist, card["scored"], tmp / "plots" / "margin_hist.png", group="source")
            plots.append("![margin histogram per source (scored pairs)](plots/margin_hist.png)")
        save_plot(plot_source_mix, everything, tmp / "plots" / "source_mix.png", group="dataset")
        save_plot(plot_lengths, pairs, tmp / "plots" / "lengths.png", group="source")
        plots += ["![source mix](plots/source_mix.png)", "![lengths per source](plots/lengths.png)"]
        sections += [
            ("Plots", "\n\n".join(plots)),
            ("Rejected rows", rejected),
            ("Reference model", _provenance(card["scorer"], card["scored"] is not None)),
        ]
        write_text(tmp / "README.md", render_card(front, front["pretty_name"], intro, sections))
    return Path(out) / "README.md"


# --- `sdpo data card` (config + run): a shim by helper "cli" until helper "report"'s version merges ---
from dataclasses import dataclass, field  # noqa: E402


@dataclass
class CardConfig:
    """Write a Hugging Face data card (README.md + plots) for a whole dataset."""

    data: str = field(metadata={"help": "Preference data in any supported format, or a scored parquet.",
                                "positional": True})
    out: str = field(metadata={"help": "Directory for README.md and plots/."})
    scored: bool = field(default=False, metadata={"help": "Score the pairs with --model first (margins in the card)."})
    model: str = field(default="default", metadata={"help": "Reference model for --scored."})
    sample: int | None = field(default=None, metadata={"help": "With --scored: score only this many pairs (seeded)."})
    max_length: int | None = field(default=None, metadata={"help": "With --scored: the scorer's max_length."})
    seed: int = field(default=0, metadata={"help": "Seed for --sample."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --out directory."})


def run(cfg: CardConfig) -> Path:
    """`sdpo data card`: write the card; print where it went."""
    path = write_dataset_card(cfg.data, cfg.out, scored=cfg.scored, model=cfg.model, sample=cfg.sample,
                              max_length=cfg.max_length, seed=cfg.seed, overwrite=cfg.overwrite)
    print(f"wrote {path}")
    return path
