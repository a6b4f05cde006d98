"""`sdpo report`: one self-contained HTML report (plus PNGs, figures.json, summary.md) from run dirs.

    sdpo report runs/sdpo runs/dpo --out report/

Reads only files on disk: `run.json`, every `step_t/{summary.json,trainer_state.json}`, the
partitions `manifest.json` and `step_t.parquet` named by run.json (else each step's
`reference.parquet`), and `eval/eval.json` + `eval/scores.parquet` (+ `eval/generations.jsonl`
with `--generate`) written by `sdpo eval`. A figure whose inputs are missing is left out with a
note saying which command writes them.

Several runs are compared by *label*: run.json `"label"` when present, else the run folder's
name without a trailing `-seedN`/`_seedN`/`-sN`. Runs sharing a label are seeds of one
configuration (seed: run.json `"seed"`, else config.yaml's `seed`, else that suffix): bars show their mean, error bars
one standard deviation, dots each seed.

The text of each section (settings, step table, reference schedule, held-out numbers, behaviour,
difficulty and length) is written once as a list of blocks and rendered twice: markdown for
summary.md and HTML for report.html, every string from data escaped for its format
(`sdpo_kit.escape`). Figures are drawn by `sdpo_kit.plots`; the verdict by `verdict.py`.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdpo_kit import escape
from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import read_json, write_json, write_text
from sdpo_kit import plots
from sdpo_kit.report import verdict


@dataclass
class ReportConfig:
    """Write one self-contained HTML report (images inline) plus PNGs, figures.json and summary.md."""

    runs: list[str] = field(default_factory=list, metadata={
        "help": "Run directories written by `sdpo train` (several runs are compared).", "positional": True})
    out: str = field(default="report", metadata={"help": "Output folder for report.html, PNGs, summary.md."})
    signal: str = field(default="judge_confidence", metadata={
        "help": "Held-out column used as an external difficulty signal when present."})

    def __post_init__(self):
        self.runs = [self.runs] if isinstance(self.runs, str) else [str(r) for r in self.runs]
        if not self.runs:
            raise UsageError("sdpo report", "RUNS is required: one or more run directories written by `sdpo train`")


def run(cfg: ReportConfig) -> dict[str, Path]:
    """`sdpo report`: write the report folder, print where the page and the summary went."""
    paths = write_report(cfg.runs, cfg.out, signal=cfg.signal)  # bad input: one line from the CLI boundary
    print(f"report: {paths['html']}")
    print(f"summary: {paths['summary']}")
    return paths


SEED_SUFFIX = re.compile(r"[-_](?:seed|s)(\d+)$")


def _find(path: str | None, run_dir: Path) -> Path | None:
    """A path written into run.json: as given (absolute or from the cwd), else beside the run."""
    if not path:
        return None
    for candidate in (Path(path), run_dir / path, run_dir.parent / path, run_dir.parent.parent / path):
        if candidate.exists():
            return candidate
    return None


def _step_partition(run_dir: Path, step: dict) -> dict:
    """γ_ref and source counts of the pairs step t trained on.

    From the partition files run.json names (margins under S, as in the data card) when they
    carry a `margin` column, else from the step's reference.parquet (under M_{t-1}).
    """
    import polars as pl

    files = step.get("partition") or []
    paths = [_find(f, run_dir) for f in ([files] if isinstance(files, str) else files)]
    ok = paths and all(p and p.is_file() and "margin" in pl.read_parquet_schema(p) for p in paths)
    if not ok:
        paths, under = [run_dir / step["dir"] / "reference.parquet"], "each step's reference"
        if not paths[0].is_file():
            return {}
    else:
        under = "S (data card)"
    df = pl.concat([pl.read_parquet(p, columns=["margin", "source"]) for p in paths])
    sources = dict(sorted(df.group_by("source").len().iter_rows()))
    return {"step": step["step"], "margin": df["margin"].to_list(), "sources": sources, "under": under}


def _trained_seed(run_dir: Path, suffix: re.Match | None):
    """The training seed: config.yaml's `seed` (a DPOConfig override), else the folder's -seedN suffix."""
    import yaml

    path = run_dir / "config.yaml"
    seed = (yaml.safe_load(path.read_text()) or {}).get("seed") if path.is_file() else None
    return seed if seed is not None else (int(suffix.group(1)) if suffix else None)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report plots for one run directory, read from disk."""
    import polars as pl

    from sdpo_kit.runs import read_run

    run_dir = Path(run_dir)
    meta = read_run(run_dir)  # missing, damaged or empty run.json: a one-line InputError
    parts_dir = _find(meta.get("partitions"), run_dir)
    has_manifest = parts_dir is not None and (parts_dir / "manifest.json").is_file()
    manifest = read_json(parts_dir / "manifest.json") if has_manifest else None
    steps = []
    for s in meta.get("steps", []):
        d = run_dir / s["dir"]
        state = read_json(d / "trainer_state.json") if (d / "trainer_state.json").is_file() else {}
        summary = read_json(d / "summary.json") if (d / "summary.json").is_file() else {"step": s["step"]}
        steps.append({"step": s["step"], "summary": summary, "log_history": state.get("log_history", []),
                      "partition": _step_partition(run_dir, s)})
    ev = run_dir / "eval"
    if (ev / "eval.json").is_file():
        check_eval_models(meta, read_json(ev / "eval.json"), ev / "eval.json")
    name = run_dir.resolve().name
    m = SEED_SUFFIX.search(name)
    return {
        "dir": str(run_dir), "name": name, "meta": meta, "manifest": manifest, "steps": steps,
        "label": meta.get("label") or SEED_SUFFIX.sub("", name),
        "seed": meta.get("seed", _trained_seed(run_dir, m)),
        "eval": read_json(ev / "eval.json") if (ev / "eval.json").is_file() else None,
        "scores": pl.read_parquet(ev / "scores.parquet") if (ev / "scores.parquet").is_file() else None,
    }


def check_eval_models(meta: dict, ev: dict, path: Path) -> None:
    """eval.json must describe this run's models: each model's fingerprint as run.json records it."""
    recorded = {"S": meta.get("base_fingerprint")} | {
        f"M{s['step']}": s.get("model_fingerprint") for s in meta.get("steps", [])}
    wrong = [f"{m['name']} {m.get('fingerprint')} (run.json: {recorded[m['name']]})" for m in ev.get("models", [])
             if recorded.get(m.get("name")) and m.get("fingerprint") and m["fingerprint"] != recorded[m["name"]]]
    if wrong:
        raise InputError(path, f"scored other weights than run.json records: {'; '.join(wrong)}; rerun `sdpo eval`")


# ---------------------------------------------------------------- figures

def _figure(name: str, caption: str, ncols: int, draw) -> dict:
    """A 1×ncols report figure: `draw(axes)` fills it when the report is written (`plots.save_figure`)."""
    return {"name": name, "caption": caption, "ncols": ncols, "draw": draw}


def run_figures(run: dict, signal: str = "judge_confidence") -> tuple[list[dict], list[str]]:
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
    schedule = run["meta"].get("reference_schedule") or "stepwise"
    refs = plots.REFERENCE_WORDS.get(schedule, plots.REFERENCE_WORDS["stepwise"])
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


def _final_vs_s(ev: dict) -> dict:
    """The final model's held-out numbers: preference accuracy, and its reward margin/accuracy vs S."""
    final = ev["models"][-1]
    vs_s = next((c for c in ev["comparisons"] if c["policy"] == final["name"] and c["reference"] == "S"), {})
    return {"model": final["name"], "accuracy": final["accuracy"], "mean_margin": final["mean_margin"],
            "reward_margin": vs_s.get("reward_margin_mean"), "reward_accuracy": vs_s.get("reward_accuracy")}


def comparison_figures(runs: list[dict]) -> list[dict]:
    """Held-out accuracy and reward margin vs S of each run's final model, by label (seeds = error bars)."""
    groups: dict[str, dict] = {}
    for r in runs:
        if r["eval"]:
            final = _final_vs_s(r["eval"])
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


# ---------------------------------------------------------------- text: blocks, rendered as markdown and as HTML
#
# A block is ("h2" | "h3", text), ("p" | "warn", template, *data) or ("table", header, rows).
# In a template each `{}` takes the next data value (escaped for the format) and backticks mark
# code; table cells are display text (numbers already formatted) and are escaped for the format.

def _text(v: Any) -> str:
    """A number or value as the report shows it: floats to 4 significant digits, None as a dash."""
    return f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else str(v))


def _md_fill(template: str, data: tuple) -> str:
    pieces = template.split("{}")
    return pieces[0] + "".join(escape.md_cell(d) + p for d, p in zip(data, pieces[1:]))


def _html_fill(template: str, data: tuple) -> str:
    out, code = [], False
    for i, piece in enumerate(template.split("{}")):
        for j, chunk in enumerate(piece.split("`")):
            if j:  # a backtick of the template: opens or closes a code span
                out.append("</code>" if code else "<code>")
                code = not code
            out.append(escape.html(chunk))
        if i < len(data):
            out.append(escape.html(data[i]))
    return "".join(out)


def to_markdown(blocks: list[tuple]) -> str:
    """summary.md's text of a section: blocks separated by a blank line."""
    def one(b: tuple) -> str:
        kind = b[0]
        if kind in ("h2", "h3"):
            return "#" * int(kind[1]) + " " + escape.md_cell(b[1])
        if kind == "table":
            return escape.md_table(b[1], b[2]).rstrip("\n")
        text = _md_fill(b[1], b[2:])
        return f"**{text}**" if kind == "warn" else text

    return "\n\n".join(one(b) for b in blocks) + "\n" if blocks else ""


def to_html(blocks: list[tuple]) -> list[str]:
    """report.html's elements of a section."""
    def one(b: tuple) -> str:
        kind = b[0]
        if kind in ("h2", "h3"):
            return f"<{kind}>{escape.html(b[1])}</{kind}>"
        if kind == "table":
            return escape.html_table(b[1], b[2])
        text = _html_fill(b[1], b[2:])
        return f"<p class='note'><strong>{text}</strong></p>" if kind == "warn" else f"<p>{text}</p>"

    return [one(b) for b in blocks]


STEP_KEYS = ("pairs", "ref_margin_mean", "loss_first", "loss_end", "reward_margin_end", "reward_accuracy_end")


def run_blocks(r: dict, signal: str = "judge_confidence") -> list[tuple]:
    """One run's text: settings, per-step training numbers, reference schedule, held-out numbers,
    behaviour, difficulty and length."""
    meta = r["meta"]
    out = [("h2", r["name"]),
           ("p", "mode `{}`, base model `{}`, β = {}, status `{}`, label `{}`, seed {}", meta.get("mode"),
            meta.get("base_model"), meta.get("beta"), meta.get("status"), r["label"], _text(r["seed"])),
           ("p", "End-of-step loss, reward margin and accuracy are over the whole partition after the step "
                 "(M_t against M_{t-1})."),
           ("table", ["step", "pairs", "γ_ref mean (under M_{t-1})", "loss first", "loss end", "reward margin end",
                      "reward accuracy end"],
            [[_text(v) for v in (s["step"], *map(s["summary"].get, STEP_KEYS))] for s in r["steps"]])]
    out += reference_blocks(r)
    ev = r["eval"]
    if ev:
        d = ev["data"]
        out += [("p", "Held-out: `{}`, {} pairs scored by every model ({} dropped, see eval/rejects.jsonl).",
                 d["path"], d["pairs"], d.get("rejected", 0)),
                ("table", ["model", "n pairs", "preference accuracy", "mean γ", "s.e."],
                 [[_text(v) for v in (m["name"], m["pairs"], m["accuracy"], m["mean_margin"], m.get("sem"))]
                  for m in ev["models"]]),
                ("table", ["policy", "reference", "n pairs", "reward margin mean", "s.e.", "reward accuracy"],
                 [[_text(v) for v in (c["policy"], c["reference"], c["pairs"], c["reward_margin_mean"], c.get("sem"),
                                      c["reward_accuracy"])] for c in ev["comparisons"]])]
        if r["scores"] is not None and signal in r["scores"].columns:
            for m in ev["models"]:
                rho = plots.rank_rho(r["scores"][signal].to_list(), r["scores"][f"gamma_{m['name']}"].to_list())
                out.append(("p", "Spearman ρ(γ of {}, `{}`) = {}", m["name"], signal, f"{rho:.3f}"))
        out += behaviour_blocks(r)
    return out + length_blocks(r)


def comparison_blocks(runs: list[dict]) -> list[tuple]:
    """Final model of every run on its held-out data, one row per run."""
    rows = [[_text(v) for v in (r["name"], r["label"], schedule_label(r["meta"]), r["seed"], r["eval"]["data"]["pairs"],
                                *_final_vs_s(r["eval"]).values())] for r in runs if r["eval"]]
    if len(runs) < 2 or not rows:
        return []
    keys = {r["eval"]["data"].get("key") or r["eval"]["data"]["path"] for r in runs if r["eval"]}
    warn = [("warn", "Warning: these runs were evaluated on different held-out pairs; compare with care.")]
    return [("h2", "Runs compared"), *(warn if len(keys) > 1 else []), ("table", [
        "run", "label", "reference", "seed", "n pairs", "final model", "preference accuracy", "mean γ",
        "reward margin vs S", "reward accuracy vs S"], rows)]


def summary_markdown(runs: list[dict], signal: str = "judge_confidence", verdict_md: str = "") -> str:
    """The report's short text: the verdict, run comparison, then per run its training and held-out numbers."""
    return "\n".join(["# sDPO report", "", verdict_md, to_markdown(comparison_blocks(runs))]
                     + [to_markdown(run_blocks(r, signal)) for r in runs])


# ---------------------------------------------------------------- reference schedule and behaviour (`eval --generate`)

ANSWER_CHARS = 400  # side-by-side cells are cut here (the full answers are in eval/generations.jsonl)
SIDE_BY_SIDE = 3


def schedule_label(meta: dict) -> str:
    """The run's reference schedule in words: `stepwise`, `fixed`, `mix α=0.5`, or `S (dpo)`."""
    if meta.get("mode") == "dpo":
        return "S (dpo)"
    schedule = meta.get("reference_schedule") or "stepwise"  # runs before the schedule flag were stepwise
    return f"mix α={meta.get('ref_mix_alpha')}" if schedule == "mix" else schedule


def reference_blocks(r: dict) -> list[tuple]:
    """Per step: the reference's schedule, fingerprint and how its exactness was checked."""
    rows = []
    for s in r["steps"]:
        summary = s["summary"]
        check = summary.get("reference_check") or {}
        how = (f"re-scored {check.get('pairs')} pairs, max |Δ| {check.get('max_abs_diff', 0):.2g}"
               if check.get("kind") == "rescored" else "first-step rewards 0 (reference = start)")
        rows.append([str(v) for v in (s["step"], schedule_label(r["meta"]), summary.get("reference_fingerprint"),
                                      summary.get("reference_exact"), how)])
    return [("table", ["step", "reference schedule", "reference fingerprint", "exact", "check"], rows)] if rows else []


def behaviour_blocks(r: dict) -> list[tuple]:
    """Length drift per model (S, M1, ...) and three prompts side by side (S vs the final model)."""
    b = (r.get("eval") or {}).get("behaviour")
    if not b:
        return []
    models = b["models"]
    base = models.get("S", {}).get("mean_tokens")
    rows = []
    for name, m in models.items():
        drift = None if base is None or m.get("mean_tokens") is None else m["mean_tokens"] - base
        rows.append([name, _num(m.get("mean_tokens")), _num(drift, "+.1f"), _num(m.get("cut_share"), ".2f"),
                     _num(m.get("distinct_2"), ".3f"), _num(m.get("kl_vs_S"), "+.4f")])
    out = [("p", "Behaviour on {} held-out prompts ({}, at most {} new tokens; answers in eval/generations.jsonl).",
            b["prompts"], b["decoding"], b["max_new_tokens"]),
           ("table", ["model", "mean answer tokens", "length drift vs S", "cut at limit", "distinct-2",
                      "KL vs S (nats/token)"], rows)]
    return out + side_by_side(Path(r["dir"]) / "eval" / b.get("generations", "generations.jsonl"), list(models))


def side_by_side(path: Path, names: list[str]) -> list[tuple]:
    """The first three prompts with S's and the final model's answers."""
    if not path.is_file() or len(names) < 2:
        return []
    rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    final = names[-1]
    by = {(x["model"], x["prompt_id"]): x for x in rows}
    ids = list(dict.fromkeys(x["prompt_id"] for x in rows if x["model"] == "S"))[:SIDE_BY_SIDE]
    cells = []
    for pid in ids:
        prompt = by[("S", pid)]["prompt"]
        text = " / ".join(str(m.get("content", "")) for m in prompt) if isinstance(prompt, list) else str(prompt)
        answers = [by.get((n, pid), {}).get("answer", "") for n in ("S", final)]
        cells.append([t if len(t) <= ANSWER_CHARS else t[:ANSWER_CHARS] + " …" for t in [text, *answers]])
    return [("table", ["prompt", "S", final], cells)]


def _num(v, fmt: str = ".1f") -> str:
    return "–" if v is None else format(v, fmt)


# ---------------------------------------------------------------- difficulty and length (issue 12)

def length_sentence(r: dict) -> tuple:
    """("p", template, *data): how much of the run's easy-to-hard order is answer length; () when unknown."""
    rec = (r.get("manifest") or {}).get("length") or {}
    held = ((r.get("eval") or {}).get("length") or {}).get("models") or []
    parts, data = [], []
    if rec.get("key") and rec.get("rho_key_length") is not None:
        rho = rec["rho_key_length"]
        parts.append(f"the partitions' ordering key `{{}}` has Spearman ρ {rho:+.2f} with ln(chosen/rejected "
                     f"tokens), so about {rho * rho:.0%} of its rank variance is the length ratio"
                     + (f", and the step index has ρ {rec['rho_step_length']:+.2f}" if rec.get("rho_step_length") is not None else ""))
        data.append(rec["key"])
    if held and held[0].get("rho_length") is not None:
        parts.append(f"on held-out pairs γ of {{}} has ρ {held[0]['rho_length']:+.2f} with it")
        data.append(held[0]["name"])
    if not parts:
        return ()
    return ("p", "How much of the order is length: " + "; ".join(parts) + ".", *data)


def length_blocks(r: dict) -> list[tuple]:
    """The run's "Difficulty and length" section: the sentence, then accuracies under sum / avg γ per quintile."""
    sentence = length_sentence(r)
    held = ((r.get("eval") or {}).get("length") or {})
    if not sentence and not held:
        return []
    out = [("h3", "Difficulty and length")] + ([sentence] if sentence else [])
    if held:
        edges = held["bucket_edges"]
        head = ["model", "accuracy (sum γ)", "accuracy (per-token γ)", "ρ(γ, ln len ratio)", "slope [nats/unit]"]
        head += [f"Q{i + 1} {lo:+.2f}…{hi:+.2f} (sum/avg)" for i, (lo, hi) in enumerate(edges)]
        rows = [[_text(v) for v in (m["name"], m["accuracy_sum"], m["accuracy_avg"], m["rho_length"], m["slope"])]
                + [f"{q['accuracy_sum']:.2f}/{'–' if q['accuracy_avg'] is None else format(q['accuracy_avg'], '.2f')}"
                   for q in m["quintiles"]] for m in held["models"]]
        out.append(("table", head, rows))
    return out


# ---------------------------------------------------------------- the report folder

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1300px;margin:2em auto;
padding:0 1em;color:#222}h1{border-bottom:2px solid #4C72B0}h2{margin-top:2em;color:#2d4a7a}
figure{margin:1.5em 0;padding:.5em;border:1px solid #ddd;border-radius:6px}img{max-width:100%}
figcaption{color:#555;font-size:.9em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.note{color:#a05a00}"""
REPORT_FILES = (".png", ".html", ".md", ".json")


def write_report(run_dirs: list[str | Path], out: str | Path, signal: str = "judge_confidence") -> dict[str, Path]:
    """Write report.html (images inline), one PNG per figure, figures.json and summary.md into `out`.

    Atomically as a folder: everything goes to a temporary sibling folder that replaces `out` at
    the end, so a kill leaves the old report (or none) and no PNG of an older report survives. An
    existing `out` must be a report folder (only report files) or empty: other files are never deleted.
    """
    from sdpo_kit.io import atomic_dir, check_out_dir

    final = Path(out)
    if final.exists() and not final.is_dir():
        raise InputError(f"--out {final}", "is a file, not a folder: pass a folder for the report")
    entries = list(final.iterdir()) if final.is_dir() else []
    is_report = (final / "report.html").is_file() and all(p.is_file() and p.suffix in REPORT_FILES for p in entries)
    if entries and not is_report:
        raise UsageError(f"--out {final}", "holds files that are not a report (it would be replaced as a whole); "
                         "pass a new or empty folder")
    runs = [load_run(d) for d in run_dirs]  # bad runs fail before anything is written
    check_out_dir(final.parent, flag=f"--out {final}: its folder")
    with atomic_dir(final, overwrite=True) as tmp:
        paths = _write_report(runs, tmp, signal)
    return {k: final / Path(v).name for k, v in paths.items()}


def _write_report(runs: list[dict], out: Path, signal: str = "judge_confidence") -> dict[str, Path]:
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise UsageError(f"two run directories share a name ({names}): figure files would collide.")
    answer = verdict.summary(runs)  # the verdict opens the page and summary.md
    sections, index = [verdict.to_html(answer)], {}
    parts = [(comparison_blocks(runs), "", comparison_figures(runs), [])]
    parts += [(run_blocks(r, signal), r["name"] + "_", *run_figures(r, signal)) for r in runs]
    for blocks, prefix, figs, notes in parts:
        body = to_html(blocks) + [f"<p class='note'>{escape.html(n)}</p>" for n in notes]
        for f in figs:
            png = out / f"{prefix}{f['name']}.png"
            drawn = plots.save_figure(f["draw"], png, ncols=f["ncols"])
            index[png.stem] = {"png": png.name, "caption": f["caption"], "axes": drawn["series"]}
            b64 = base64.b64encode(drawn["png"]).decode()
            stem = escape.html(png.stem)  # the run folder's name is data: never markup in an attribute
            body.append(f"<figure id='{stem}'><img alt='{stem}' src='data:image/png;base64,{b64}'>"
                        f"<figcaption>{escape.html(f['caption'])}</figcaption></figure>")
        sections.append("<section>" + "\n".join(body) + "</section>")
    md = summary_markdown(runs, signal, verdict.markdown(answer))
    write_json(out / "verdict.json", answer)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sDPO report</title><style>{CSS}</style>"
            f"</head><body><h1>sDPO report</h1>\n" + "\n".join(sections) + "</body></html>")
    return {"html": write_text(out / "report.html", page), "summary": write_text(out / "summary.md", md + "\n"),
            "figures": write_json(out / "figures.json", index)}
