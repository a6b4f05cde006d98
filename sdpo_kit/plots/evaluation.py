"""Held-out figures (`sdpo eval` results in the report): γ of S, M1, …, accuracy per source and per
length quintile, γ against a difficulty signal and against length, and the run comparison.

    python -c "import matplotlib.pyplot as plt; from sdpo_kit.plots import plot_reference_margins; \
plot_reference_margins([{'name': 'S', 'mean_margin': -3.0, 'sem': 0.4}], plt.gca()); plt.savefig('g.png')"
"""

from __future__ import annotations

import numpy as np

from sdpo_kit.escape import mpl_label  # source names, run labels, column names are data: no mathtext
from sdpo_kit.plots.base import STEP_COLORS, model_color, rank_rho


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
