"""Data figures (partition and dataset cards): γ_ref histograms, source mix, lengths, key against length.

    python -c "import matplotlib.pyplot as plt; from sdpo_kit.plots import plot_partition_sources; \
plot_partition_sources([{'step': 1, 'sources': {'a': 3, 'b': 2}}], plt.gca())"
"""

from __future__ import annotations

import matplotlib
import numpy as np
import polars as pl

from sdpo_kit.escape import mpl_label  # source names, run labels, column names are data: no mathtext
from sdpo_kit.plots.base import step_color


def plot_partition_margins(partitions: list[dict], ax, bins: int = 30, reference: str = "the curation reference",
                           group: str = "step"):
    """Histograms of γ_ref per partition on shared bins. `partitions`: [{"step", "margin": list}].

    `group` names the key that labels each histogram ("step" for partitions, "source" for a data card)."""
    every = np.concatenate([np.asarray(p["margin"], float) for p in partitions if len(p["margin"])] or [np.zeros(1)])
    every = every[np.isfinite(every)]
    # Bins over the 1st-99th percentile (outliers go to the edge bins) so a few long answers
    # with huge |γ| do not squash everything else into one bar; counts still sum to n.
    lo, hi = np.percentile(every, [1, 99]) if len(every) else (0.0, 1.0)
    edges = np.histogram_bin_edges(np.clip(every, lo, hi), bins=bins)
    for i, p in enumerate(partitions):
        m = np.asarray(p["margin"], float)
        counts, _ = np.histogram(np.clip(m, edges[0], edges[-1]), bins=edges)
        color = step_color(p["step"] if group == "step" else i + 1)
        ax.stairs(counts, edges, fill=True, alpha=0.35, color=color,
                  label=mpl_label(f"{group} {p[group]} (n={len(m)}, mean {m.mean():.3g})"))
        ax.stairs(counts, edges, color=color, lw=1.2, label="_outline")  # crisp outline over the translucent fill
    ax.axvline(0, color="0.3", lw=0.8)
    ax.set_xlabel("γ_ref = log π_ref(y_w|x) − log π_ref(y_l|x) [nats], clipped to 1st–99th pct")
    ax.set_ylabel("pairs")
    ax.set_title(f"γ_ref per {'partition' if group == 'step' else group}, under {reference}")
    ax.legend(loc="best")
    return ax


def plot_partition_sources(steps: list[dict], ax, group: str = "step"):
    """Stacked bars: how many pairs of each source every partition holds (manifest "sources").

    `steps`: [{"step", "sources": {name: pairs}}]; `group` as in `plot_partition_margins`."""
    sources = sorted({name for s in steps for name in s["sources"]})
    labels = [mpl_label(f"{group} {s[group]}") for s in steps]
    left = np.zeros(len(steps))
    cmap = matplotlib.colormaps["tab20"]
    for i, name in enumerate(sources):
        counts = np.array([s["sources"].get(name, 0) for s in steps], float)
        ax.barh(labels, counts, left=left, color=cmap(i % 20), label=mpl_label(name))
        left += counts
    ax.invert_yaxis()  # step 1 on top, like a table
    ax.set_xlabel("pairs")
    ax.set_title(f"Source mix per {'partition' if group == 'step' else group}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=min(len(sources), 5))
    ax.grid(axis="y", visible=False)
    return ax


LENGTH_COLS = ("prompt", "chosen", "rejected")


def with_lengths(df: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """`df` plus `{prompt,chosen,rejected}_len`: token counts when scored, else characters (the card's
    length columns and `plot_lengths`)."""
    if all(f"{c}_tokens" in df.columns for c in LENGTH_COLS):
        return df.with_columns(pl.col(f"{c}_tokens").alias(f"{c}_len") for c in LENGTH_COLS), "tokens"
    return df.with_columns(_text_len(df, c).cast(pl.Int64).alias(f"{c}_len") for c in LENGTH_COLS), "chars"


def _text_len(df: pl.DataFrame, col: str) -> pl.Expr:
    """Characters of a column that is either a string or a list of {role, content} messages."""
    if df.schema[col] == pl.String:
        return pl.col(col).str.len_chars()
    return pl.col(col).list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()


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


def plot_key_vs_length(data: pl.DataFrame, ax, key: str, group: str = "step"):
    """Scatter of an ordering key against ln(chosen/rejected tokens), one colour per group, Spearman ρ in the title."""
    from sdpo_kit.length import fmt_rho, log_length_ratio
    from sdpo_kit.length import spearman as rho_of

    ratio = log_length_ratio(data)
    y = data[key].cast(pl.Float64).to_numpy()
    groups = data[group].to_numpy()
    for g in sorted(set(groups.tolist())):
        m = groups == g
        ax.scatter(ratio[m], y[m], s=6, alpha=0.5, label=mpl_label(f"{group} {g}"))
    ax.axvline(0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("ln(chosen tokens / rejected tokens)")
    ax.set_ylabel(mpl_label(key))
    ax.set_title(mpl_label(f"{key} against the log length ratio (Spearman ρ {fmt_rho(rho_of(y, ratio))})"))
    ax.legend(fontsize=7, markerscale=2)
    return ax
