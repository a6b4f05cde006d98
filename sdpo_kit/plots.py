"""Every figure of sdpo_kit: report, partition cards and dataset cards draw with these functions.

    python -c "import matplotlib.pyplot as plt; from sdpo_kit.plots import plot_reference_margins; \
plot_reference_margins([{'name': 'S', 'mean_margin': -3.0, 'sem': 0.4}], plt.gca()); plt.savefig('g.png')"

Each plot function takes plain data and an Axes and returns the Axes, so it can be reused in a
notebook with whatever data you have; `sdpo report` feeds them from the run directory (see
`sdpo_kit/report/html.py` for where each input comes from) and the cards from the pairs
(`sdpo_kit/curate/card.py`). `save_figure` is the one place a figure is made and written: one
style, a deterministic PNG (no Software/date stamp: the same data gives the same bytes), written
atomically. `axes_series(ax)` reads back what an Axes shows (lines, bars, points), which is how
the report's `figures.json` and the tests check the plotted series rather than the pixels.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable

import matplotlib
import matplotlib.style
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sdpo_kit.escape import mpl_label  # source names, run labels, column names are data: no mathtext
from sdpo_kit.io import atomic_path
from sdpo_kit.stats import spearman

# One colour per training step (step 1 = first colour), the same in every figure.
STEP_COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]
STYLE = {
    "figure.dpi": 110,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "legend.fontsize": 8,
    "legend.frameon": False,
}


# Sizes of the two kinds of figure: a report figure is 6.2 x 4.2 in per panel, cropped to its content;
# a card plot is one 7 x 4 in panel at 100 dpi (700 x 400 px, as the Hugging Face hub shows it).
REPORT = {"panel": (6.2, 4.2), "dpi": 110, "crop": True}
CARD = {"panel": (7, 4), "dpi": 100, "crop": False}


def save_figure(draw: Callable[[list], Any], path: str | Path | None = None, ncols: int = 1,
                panel: tuple[float, float] = REPORT["panel"], dpi: int = REPORT["dpi"], crop: bool = REPORT["crop"]) -> dict:
    """Make a 1 x ncols figure in the house style, let `draw(axes)` fill it, write it as a PNG.

    Returns {"png": the PNG bytes, "series": `axes_series` of every panel}; with `path` the PNG is
    also written there atomically. Pass `**CARD` for a card plot, nothing for a report figure.
    """
    with matplotlib.style.context(STYLE):  # a Figure, not pyplot: no backend, no global figure to close
        fig = Figure(figsize=(panel[0] * ncols, panel[1]), dpi=dpi)
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        draw(list(axes))
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if crop else None, metadata={"Software": None})
    series = [axes_series(a) for a in axes]
    if path is not None:
        with atomic_path(path) as tmp:
            tmp.write_bytes(buf.getvalue())
    return {"png": buf.getvalue(), "series": series}


def step_color(step: int) -> str:
    return STEP_COLORS[(step - 1) % len(STEP_COLORS)]


def model_color(name: str) -> str:
    """Grey for S; M_t gets the colour of step t, whichever models an eval kept."""
    return "0.55" if name == "S" else step_color(int(name.lstrip("M")))


def _training_points(log_history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(optimizer step, value) of every training log entry that carries `key`."""
    rows = [r for r in log_history if key in r and "step" in r]
    return [float(r["step"]) for r in rows], [float(r[key]) for r in rows]


def plot_reward_margin_timeline(steps: list[dict], ax):
    """Mean implicit reward margin while training, the steps laid end to end on one time axis.

    `steps`: [{"step": t, "log_history": TRL's log_history}], in step order. Step t's curve
    starts where step t-1 ended, so the x axis counts optimizer steps of the whole run; dashed
    lines mark the step boundaries. The margin of each step is measured against its own
    reference (M_{t-1}), so each curve starts near 0.
    """
    offset = 0.0
    for s in steps:
        x, y = _training_points(s["log_history"], "rewards/margins")
        if not x:
            continue
        color = step_color(s["step"])
        ax.plot([offset + v for v in x], y, marker="o", ms=3, color=color, label=f"step {s['step']}")
        end = offset + max(x)
        ax.axvline(end, color="0.6", ls="--", lw=0.8)
        offset = end
    ax.axhline(0, color="0.3", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step (whole run)")
    ax.set_ylabel("reward margin β·(γ_θ − γ_ref) [nats]")
    ax.set_title("Reward margin over training (vs each step's reference)")
    ax.legend(loc="best")
    return ax


def plot_end_of_step(summaries: list[dict], ax, key: str = "reward_margin_end"):
    """One bar per step: the value of `key` in each step's summary.json at the end of the step."""
    steps = [s["step"] for s in summaries if s.get(key) is not None]
    values = [float(s[key]) for s in summaries if s.get(key) is not None]
    bars = ax.bar([f"step {t}" for t in steps], values, color=[step_color(t) for t in steps], label=key)
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_ylabel("reward margin after the step, whole partition [nats]")
    ax.set_title("End-of-step reward margin per step")
    ax.grid(axis="x", visible=False)
    return ax


def _plot_per_step(steps: list[dict], ax, key: str):
    for s in steps:
        x, y = _training_points(s["log_history"], key)
        if x:
            ax.plot(x, y, marker="o", ms=3, color=step_color(s["step"]), label=f"step {s['step']}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step (within the step)")
    ax.legend(loc="best")
    return ax


def plot_loss_per_step(steps: list[dict], ax):
    """DPO loss of every step overlaid on the step-local time axis (the paper's Figure 3).

    `steps` as in `plot_reward_margin_timeline`. ln 2 (a policy equal to its reference) is drawn
    as a dotted line: every step should start there.
    """
    _plot_per_step(steps, ax, "loss")
    ax.axhline(math.log(2), color="0.4", ls=":", lw=1, label="ln 2")
    ax.set_ylabel("DPO loss [nats]")
    ax.set_title("DPO loss per step, overlaid")
    ax.legend(loc="best")
    return ax


def plot_reward_accuracy_per_step(steps: list[dict], ax):
    """Reward accuracy (share of batch pairs with a positive implicit reward margin) per step, overlaid."""
    _plot_per_step(steps, ax, "rewards/accuracies")
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("reward accuracy [share of pairs]")
    ax.set_title("Reward accuracy per step, overlaid")
    return ax


# What S, M1, ... are to the steps, per reference schedule (run.json's reference_schedule):
# the figure caption's words and the axis label's short form, in one place.
REFERENCE_WORDS = {
    "stepwise": "M_{t-1} is the reference of step t (the paper's Figure 2)",
    "fixed": "S is every step's reference; M_{t-1} is only step t's start",
    "mix": "M_{t-1} is step t's start; its reference is a weight average of M_{t-1} and step t-1's reference",
}
REFERENCE_AXIS = {
    "stepwise": "model (S = start; M_{t-1} is the reference of step t)",
    "fixed": "model (S = start and every step's reference)",
    "mix": "model (S = start; later references are weight averages)",
}


def plot_reference_margins(models: list[dict], ax, schedule: str = "stepwise"):
    """Mean γ = log π(y_w|x) − log π(y_l|x) of S, M1, ... on the same held-out pairs (paper Figure 2).

    `models`: [{"name", "mean_margin", "sem"}] in order S, M1, ..., M_T (eval.json "models").
    Under the stepwise schedule M_{t-1} is step t's reference, so the bars show how the reference
    improves step by step; under `fixed`/`mix` they are the step models only (REFERENCE_WORDS).
    Error bars are one standard error of the mean.
    """
    names = [m["name"] for m in models]
    values = [float(m["mean_margin"]) for m in models]
    errs = [float(m.get("sem") or 0.0) for m in models]
    bars = ax.bar([mpl_label(n) for n in names], values, yerr=errs, capsize=4, color=[model_color(n) for n in names],
                  label="mean γ")
    ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=3)
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xlabel(REFERENCE_AXIS.get(schedule, "model"))
    ax.set_ylabel("mean γ on held-out pairs [nats]")
    ax.set_title("Mean γ_ref of each step's reference, held-out pairs" if schedule == "stepwise"
                 else f"Mean γ of S and each step's model ({schedule} reference), held-out pairs")
    ax.grid(axis="x", visible=False)
    return ax


def plot_accuracy_by_source(models: list[dict], ax):
    """Held-out preference accuracy (share of pairs with γ > 0) of S, M1, ... per source and overall.

    `models`: eval.json "models" ([{"name", "accuracy", "per_source": {src: {"accuracy"}}}]).
    """
    sources = sorted({s for m in models for s in m.get("per_source", {})}) + ["all"]
    width = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        values = [m["accuracy"] if s == "all" else m["per_source"].get(s, {}).get("accuracy", np.nan) for s in sources]
        color = model_color(m["name"])
        ax.bar(np.arange(len(sources)) + (i - (len(models) - 1) / 2) * width, values, width, color=color,
               label=mpl_label(m["name"]))
    ax.set_xticks(np.arange(len(sources)), [mpl_label(s) for s in sources], rotation=20)
    ax.axhline(0.5, color="0.4", ls=":", lw=1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("preference accuracy [share with γ > 0]")
    ax.set_title("Held-out preference accuracy per source")
    ax.legend(loc="best", ncols=len(models))
    ax.grid(axis="x", visible=False)
    return ax


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
    from sdpo_kit.length import _fmt, log_length_ratio
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
    ax.set_title(mpl_label(f"{key} against the log length ratio (Spearman ρ {_fmt(rho_of(y, ratio))})"))
    ax.legend(fontsize=7, markerscale=2)
    return ax


def plot_run_comparison(groups: list[dict], ax, metric: str = "accuracy", ylabel: str | None = None):
    """One bar per run group (mean over seeds), error bar = standard deviation over seeds.

    `groups`: [{"label", "values": [one number per seed]}]; each seed is also drawn as a dot.
    """
    labels = [mpl_label(g["label"]) for g in groups]
    means = [float(np.mean(g["values"])) for g in groups]
    stds = [float(np.std(g["values"], ddof=1)) if len(g["values"]) > 1 else 0.0 for g in groups]
    bars = ax.bar(labels, means, yerr=stds, capsize=5, color=STEP_COLORS[: len(groups)] or None,
                  alpha=0.85, label=f"mean {metric}")
    ax.bar_label(bars, fmt="%.3g", fontsize=8, padding=3)
    xs = [i for i, g in enumerate(groups) for _ in g["values"]]
    ax.scatter(xs, [v for g in groups for v in g["values"]], color="k", s=12, zorder=3, label="one seed")
    ax.set_ylabel(ylabel or metric)
    if sum(len(lab) for lab in labels) > 48:  # long run labels side by side overlap: slant them
        ax.tick_params(axis="x", labelrotation=25)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    seeds = max((len(g["values"]) for g in groups), default=0)
    ax.set_title(f"Held-out {metric}, final model per run" + ("\n(bars: mean, ±1 sd over seeds)" if seeds > 1 else ""))
    ax.grid(axis="x", visible=False)
    return ax


def rank_rho(x, y) -> float:
    """stats.spearman for a label: NaN when undefined (fewer than 3 finite points, a constant side)."""
    rho = spearman(x, y)
    return float("nan") if rho is None else rho


def plot_margin_vs_signal(data: dict, ax):
    """Scatter γ_ref of a model against an external difficulty signal, Spearman ρ in the title.

    `data`: {"margin": list, "signal": list, "signal_name": str, "model": str}.
    """
    x, y = np.asarray(data["signal"], float), np.asarray(data["margin"], float)
    keep = np.isfinite(x) & np.isfinite(y)
    rho = rank_rho(x[keep], y[keep])
    ax.scatter(x[keep], y[keep], s=10, alpha=0.5, color=STEP_COLORS[0], label=f"pairs (n={int(keep.sum())})")
    ax.axhline(0, color="0.3", lw=0.8)
    signal, model = mpl_label(data["signal_name"]), mpl_label(data["model"])
    ax.set_xlabel(f"{signal} (external difficulty signal)")
    ax.set_ylabel(f"γ of {model} on held-out pairs [nats]")
    ax.set_title(f"γ_ref vs {signal}: Spearman ρ = {rho:.3f}")
    ax.legend(loc="best")
    return ax


def axes_series(ax) -> dict[str, Any]:
    """What an Axes shows, as plain numbers: lines, bars (+ error half-widths), histograms, points."""
    from matplotlib.container import BarContainer, ErrorbarContainer

    lines = [
        {"label": ln.get_label(), "x": [float(v) for v in ln.get_xdata()], "y": [float(v) for v in ln.get_ydata()]}
        for ln in ax.get_lines() if not ln.get_label().startswith("_")
    ]
    bars = []
    for c in ax.containers:
        if isinstance(c, BarContainer):
            horizontal = c.orientation == "horizontal"
            values = [float(p.get_width() if horizontal else p.get_height()) for p in c.patches]
            bars.append({"label": c.get_label(), "values": values})
    errors = [[float(abs(seg[1][1] - seg[0][1]) / 2) for seg in c.lines[2][0].get_segments()]
              for c in ax.containers if isinstance(c, ErrorbarContainer) and c.lines[2]]
    ticks = [t.get_text() for t in (ax.get_yticklabels() if any(
        getattr(c, "orientation", "") == "horizontal" for c in ax.containers) else ax.get_xticklabels())]
    hists = [{"label": p.get_label(), "counts": [float(v) for v in p.get_data().values],
              "edges": [float(v) for v in p.get_data().edges]}
             for p in ax.patches if type(p).__name__ == "StepPatch" and not p.get_label().startswith("_")]
    points = [{"label": c.get_label(), "xy": np.asarray(c.get_offsets(), float).tolist()}
              for c in ax.collections if type(c).__name__ == "PathCollection" and not c.get_label().startswith("_")]
    return {"title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "ticks": ticks,
            "lines": lines, "bars": bars, "errors": errors, "hists": hists, "points": points}


def plot_accuracy_sum_avg(models: list[dict], ax):
    """Held-out accuracy under summed γ (RewardBench `sum`) and per-token γ (`avg`) side by side.

    `models`: eval.json "length" "models" ([{"name", "accuracy_sum", "accuracy_avg"}]).
    """
    x = np.arange(len(models))
    for i, (key, label, hatch) in enumerate((("accuracy_sum", "summed γ (sum)", None),
                                             ("accuracy_avg", "per-token γ (avg)", "//"))):
        values = [np.nan if m.get(key) is None else m[key] for m in models]
        bars = ax.bar(x + (i - 0.5) * 0.4, values, 0.4, color=[model_color(m["name"]) for m in models],
                      hatch=hatch, edgecolor="0.2", label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_xticks(x, [m["name"] for m in models])
    ax.axhline(0.5, color="0.4", ls=":", lw=1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("preference accuracy [share with γ > 0]")
    ax.set_title("Held-out accuracy: summed vs per-token γ")
    ax.legend(loc="best")
    ax.grid(axis="x", visible=False)
    return ax


def plot_accuracy_by_length(models: list[dict], edges: list[list[float]], ax):
    """Accuracy (summed γ solid, per-token γ dashed) per quintile of ln(chosen/rejected tokens)."""
    for m in models:
        xs = [q["bucket"] for q in m["quintiles"]]
        ax.plot(xs, [q["accuracy_sum"] for q in m["quintiles"]], "o-", color=model_color(m["name"]),
                label=f"{m['name']} sum")
        if all(q["accuracy_avg"] is not None for q in m["quintiles"]):
            ax.plot(xs, [q["accuracy_avg"] for q in m["quintiles"]], "s--", color=model_color(m["name"]),
                    alpha=0.7, label=f"{m['name']} avg")
    ax.set_xticks(range(1, len(edges) + 1), [f"{lo:+.1f}…{hi:+.1f}" for lo, hi in edges], fontsize=7)
    ax.axhline(0.5, color="0.4", ls=":", lw=1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("quintile of ln(chosen / rejected tokens) (chosen longer →)")
    ax.set_ylabel("preference accuracy")
    ax.set_title("Held-out accuracy per length-ratio quintile")
    ax.legend(loc="best", ncols=2)
    return ax


def plot_gamma_vs_length(series: list[dict], ax):
    """γ against ln(chosen/rejected tokens) per model, with its least-squares line and Spearman ρ.

    `series`: [{"model", "ratio": list, "gamma": list}] (S and the final model).
    """
    for d in series:
        x, y = np.asarray(d["ratio"], float), np.asarray(d["gamma"], float)
        keep = np.isfinite(x) & np.isfinite(y)
        x, y = x[keep], y[keep]
        color = model_color(d["model"])
        rho = rank_rho(x, y)
        ax.scatter(x, y, s=8, alpha=0.4, color=color, label=f"{d['model']} (n={len(x)}, ρ={rho:.2f})")
        if len(x) > 1:
            slope, intercept = np.polyfit(x, y, 1)
            grid = np.array([x.min(), x.max()])
            ax.plot(grid, intercept + slope * grid, color=color, lw=2, label=f"{d['model']} fit: {slope:.2f} nats per unit")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.axvline(0, color="0.3", lw=0.8, ls=":")
    ax.set_xlabel("ln(chosen tokens / rejected tokens)")
    ax.set_ylabel("γ on held-out pairs [nats]")
    ax.set_title("γ against the log length ratio")
    ax.legend(loc="best")
    return ax
