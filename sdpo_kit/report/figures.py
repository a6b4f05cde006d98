"""The report's figures: which figures one run (or a comparison of runs) gets, and notes for those left out.

    python -c "from sdpo_kit.report.load import load_run; from sdpo_kit.report.figures import run_figures; print(run_figures(load_run('runs/sdpo'))[1])"

A figure is a dict (`name`, `caption`, `ncols`, `draw`); `draw(axes)` fills its 1×ncols axes
when `report/html.py` writes the report (`plots.save_figure`). Drawing is `sdpo_kit.plots`.
"""

from __future__ import annotations

from sdpo_kit import plots
from sdpo_kit.report.load import final_vs_s
from sdpo_kit.runs import run_schedule


def _figure(name: str, caption: str, ncols: int, draw) -> dict:
    """A 1×ncols report figure: `draw(axes)` fills it when the report is written (`plots.save_figure`)."""
    return {"name": name, "caption": caption, "ncols": ncols, "draw": draw}


def run_figures(run: dict, signal: str) -> tuple[list[dict], list[str]]:
    """The figures of one run, and notes for those whose inputs are missing."""
    figs, notes = _training_figures(run)
    held_figs, held_notes = _heldout_figures(run, signal)
    return figs + held_figs, notes + held_notes


def _training_figures(run: dict) -> tuple[list[dict], list[str]]:
    """Training curves and partition statistics of one run, and notes for those left out."""
    figs, notes, steps = [], [], run["steps"]
    if any(s["log_history"] for s in steps):
        figs.append(_figure("reward_margin", "Mean implicit reward margin of the target over its reference while "
                            "training (steps end to end), and its value at the end of each step.", 2,
                            lambda a: (plots.plot_reward_margin_timeline(steps, a[0]),
                                       plots.plot_end_of_step([s["summary"] for s in steps], a[1]))))
        points = max(sum("loss" in e for e in s["log_history"]) for s in steps)
        if points <= 1:  # one dot per step draws no curve: the step table has loss first/end
            notes.append(f"Loss and reward accuracy per step left out: each step logged {points} training point "
                         "(fewer optimiser steps than logging_steps); the table above has each step's loss.")
        else:
            figs.append(_figure("loss_accuracy", "DPO loss and reward accuracy of each step, overlaid on the "
                                "step-local time axis; a step starts at ln 2 when its reference is its start (stepwise; "
                                "under fixed or mix the later steps start below or above it).", 2,
                                lambda a: (plots.plot_loss_per_step(steps, a[0]),
                                           plots.plot_reward_accuracy_per_step(steps, a[1]))))
    else:
        notes.append("No trainer_state.json log history: training curves left out.")
    parts = [s["partition"] for s in steps if s["partition"]]
    if run.get("partitions_changed"):
        notes.append("The partitions folder changed since this run trained on it (its sha256 differs from run.json's): "
                     "the partition figures come from each step's reference.parquet inside the run instead.")
    if parts:
        figs.append(_figure("partitions", "Partition statistics from the data card: γ_ref histograms and the "
                            "source mix of every step.", 2,
                            lambda a: (plots.plot_partition_margins(parts, a[0], reference=parts[0]["under"]),
                                       plots.plot_partition_sources(parts, a[1]))))
    return figs, notes


def _heldout_figures(run: dict, signal: str) -> tuple[list[dict], list[str]]:
    """The held-out figures of one run (from `sdpo eval`), and notes for those left out."""
    figs, notes, ev = [], [], run["eval"]
    if ev is None:
        notes.append(f"No eval results: run `sdpo eval --run {run['dir']} --data HELDOUT` for the held-out figures.")
        return figs, notes
    schedule = run_schedule(run["meta"])
    refs = plots.REFERENCE_WORDS[schedule]
    n_sources = len({s for m in ev["models"] for s in m.get("per_source", {})})
    if n_sources <= 1:  # one source: the per-source panel would repeat the overall accuracy
        notes.append("Preference accuracy per source left out: the held-out pairs have one source "
                     "(the table above has each model's accuracy).")
        figs.append(_figure("reference_margins", f"Mean γ of S, M1, … on the same held-out pairs: {refs}.", 1,
                            lambda a: plots.plot_reference_margins(ev["models"], a[0], schedule)))
    else:
        figs.append(_figure("reference_margins", f"Mean γ of S, M1, … on the same held-out pairs: {refs}; and "
                            "each model's preference accuracy per source.", 2,
                            lambda a: (plots.plot_reference_margins(ev["models"], a[0], schedule),
                                       plots.plot_accuracy_by_source(ev["models"], a[1]))))
    scores = run["scores"]
    if scores is not None and signal in scores.columns:
        names = [m["name"] for m in ev["models"]]
        cols = list(dict.fromkeys([names[0], names[-1]]))  # the start (S) and the final model
        data = [{"margin": scores[f"gamma_{c}"].to_list(), "signal": scores[signal].to_list(),
                 "signal_name": signal, "model": c} for c in cols]
        figs.append(_figure("difficulty", f"γ against the external difficulty signal `{signal}` on held-out "
                            "pairs, with the Spearman rank correlation.", len(data),
                            lambda a: [plots.plot_margin_vs_signal(d, ax) for d, ax in zip(data, a)]))
    else:
        notes.append(f"Held-out data has no `{signal}` column: difficulty-signal figure left out.")
    length = ev.get("length")
    if length and scores is not None and "log_length_ratio" in scores.columns:  # issue 12
        names = [m["name"] for m in length["models"]]
        series = [{"model": n, "ratio": scores["log_length_ratio"].to_list(), "gamma": scores[f"gamma_{n}"].to_list()}
                  for n in dict.fromkeys([names[0], names[-1]])]
        figs.append(_figure("length", "Difficulty and length on held-out pairs: accuracy under summed γ (RewardBench "
                            "`sum`) and per-token γ (`avg`); accuracy per quintile of ln(chosen/rejected tokens); γ of "
                            "S and the final model against that ratio, with least-squares lines.", 3,
                            lambda a: (plots.plot_accuracy_sum_avg(length["models"], a[0]),
                                       plots.plot_accuracy_by_length(length["models"], length["bucket_edges"], a[1]),
                                       plots.plot_gamma_vs_length(series, a[2]))))
    return figs, notes


def comparison_figures(runs: list[dict]) -> list[dict]:
    """Held-out accuracy and reward margin vs S of each run's final model, by label (seeds = error bars)."""
    groups: dict[str, dict] = {}
    for r in runs:
        if r["eval"]:
            final = final_vs_s(r["eval"])
            if final["accuracy"] is None:  # a broken final model (eval.json "broken"): nothing to draw
                continue
            g = groups.setdefault(r["label"], {"accuracy": [], "reward_margin": []})
            g["accuracy"].append(final["accuracy"])
            if final["reward_margin"] is not None:
                g["reward_margin"].append(final["reward_margin"])
    if len(runs) < 2 or not groups:
        return []
    acc = [{"label": k, "values": g["accuracy"]} for k, g in groups.items()]
    mar = [{"label": k, "values": g["reward_margin"]} for k, g in groups.items() if g["reward_margin"]]
    return [_figure("comparison", "Held-out preference accuracy (share of pairs with γ > 0) of each run's final "
                    "model, and its implicit reward margin β·(γ_final − γ_S) over S; runs with the same label are "
                    "seeds (mean, ±1 sd, dots).", 2,
                    lambda a: (plots.plot_run_comparison(acc, a[0], "preference accuracy", "share of pairs with γ > 0"),
                               plots.plot_run_comparison(mar, a[1], "reward margin vs S",
                                                         "β·(γ_final − γ_S) [nats]")))]
