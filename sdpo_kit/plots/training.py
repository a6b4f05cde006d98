"""Training figures of a run: reward margin over the steps laid end to end, loss and accuracy per step.

    python -c "import matplotlib.pyplot as plt; from sdpo_kit.plots import plot_loss_per_step; \
plot_loss_per_step([{'step': 1, 'log_history': [{'step': 1, 'loss': 0.69}, {'step': 2, 'loss': 0.6}]}], plt.gca())"

Inputs are TRL's `log_history` (each step's `trainer_state.json`) and the steps' `summary.json`.
"""

from __future__ import annotations

import math

from matplotlib.ticker import MaxNLocator

from sdpo_kit.plots.base import step_color


def _training_points(log_history: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(optimizer step, value) of every training log entry that carries `key`."""
    rows = [r for r in log_history if key in r and "step" in r]
    return [float(r["step"]) for r in rows], [float(r[key]) for r in rows]


def plot_reward_margin_timeline(steps: list[dict], ax):
    """Mean implicit reward margin while training, the steps laid end to end on one time axis.

    `steps`: [{"step": t, "log_history": TRL's log_history}], in step order. Step t's curve
    starts where step t-1 ended, so the x axis counts optimizer steps of the whole run; dashed
    lines mark the step boundaries. The margin of each step is measured against its own
    reference (M_{t-1} under the stepwise schedule: each curve starts near 0; S or a weight
    average under fixed / mix, where a step may start away from 0).
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
