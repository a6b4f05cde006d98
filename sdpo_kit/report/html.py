"""`sdpo report`: one self-contained HTML report (plus PNGs, figures.json, summary.md) from run dirs.

    sdpo report runs/sdpo runs/dpo --out report/

Reads only files on disk: `run.json`, every `step_t/{summary.json,trainer_state.json}`, the
partitions `manifest.json` and `step_t.parquet` named by run.json (else each step's
`reference.parquet`), and `eval/eval.json` + `eval/scores.parquet` written by `sdpo eval`.
A figure whose inputs are missing is left out with a note saying which command writes them.

Several runs are compared by *label*: run.json `"label"` when present, else the run folder's
name without a trailing `-seedN`/`_seedN`/`-sN`. Runs sharing a label are seeds of one
configuration (seed: run.json `"seed"`, else config.yaml's `seed`, else that suffix): bars show their mean, error bars
one standard deviation, dots each seed.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from sdpo_kit import escape
from sdpo_kit.report import plots, report_behaviour, verdict
from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import atomic_path, read_json, write_json, write_text

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

    from sdpo_kit.train.run import read_run

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


def _figure(name: str, caption: str, ncols: int, draw) -> dict:
    """Make a 1×ncols figure, let `draw(axes)` fill it; keep its PNG bytes and plotted series."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with plt.style.context(plots.STYLE):
        fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 4.2), squeeze=False)
        draw(list(axes[0]))
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    series = [plots.axes_series(a) for a in axes[0]]
    plt.close(fig)  # many runs make many figures: never keep them open
    return {"name": name, "caption": caption, "png": buf.getvalue(), "series": series}


def run_figures(run: dict, signal: str = "judge_confidence") -> tuple[list[dict], list[str]]:
    """The figures of one run, and notes for those whose inputs are missing."""
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
                                "step-local time axis; every step starts at ln 2 against its own reference.", 2,
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
    ev = run["eval"]
    if ev is None:
        notes.append(f"No eval results: run `sdpo eval --run {run['dir']} --data HELDOUT` for the held-out figures.")
        return figs, notes
    n_sources = len({s for m in ev["models"] for s in m.get("per_source", {})})
    if n_sources <= 1:  # one source: the per-source panel would repeat the overall accuracy
        notes.append("Preference accuracy per source left out: the held-out pairs have one source "
                     "(the table above has each model's accuracy).")
        figs.append(_figure("reference_margins", "Mean γ of S, M1, … on the same held-out pairs: M_{t-1} is the "
                            "reference of step t (the paper's Figure 2).", 1,
                            lambda a: plots.plot_reference_margins(ev["models"], a[0])))
    else:
        figs.append(_figure("reference_margins", "Mean γ of S, M1, … on the same held-out pairs: M_{t-1} is the "
                            "reference of step t (the paper's Figure 2); and each model's preference accuracy per "
                            "source.", 2, lambda a: (plots.plot_reference_margins(ev["models"], a[0]),
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
    figs += length_figures(run)
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


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else escape.md_cell(v))


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def run_markdown(r: dict, signal: str = "judge_confidence") -> str:
    """One run's text: settings, per-step training numbers, held-out numbers."""
    meta = r["meta"]
    md = escape.md_cell  # run names, paths and labels are data: never markup
    out = [f"## {md(r['name'])}", "", f"mode `{md(meta.get('mode'))}`, base model `{md(meta.get('base_model'))}`, "
           f"β = {md(meta.get('beta'))}, status `{md(meta.get('status'))}`, label `{md(r['label'])}`, "
           f"seed {_fmt(r['seed'])}", ""]
    out += ["End-of-step loss, reward margin and accuracy are over the whole partition after the step "
            "(M_t against M_{t-1}).", ""]
    out += _table(["step", "pairs", "γ_ref mean (under M_{t-1})", "loss first", "loss end", "reward margin end",
                   "reward accuracy end"],
                  [[s["step"]] + [s["summary"].get(k) for k in ("pairs", "ref_margin_mean", "loss_first", "loss_end",
                                                             "reward_margin_end", "reward_accuracy_end")]
                   for s in r["steps"]]) + [""]
    out += report_behaviour.reference_markdown(r)
    ev = r["eval"]
    if ev:
        d = ev["data"]
        out += [f"Held-out: `{md(d['path'])}`, {d['pairs']} pairs scored by every model"
                f" ({d.get('rejected', 0)} dropped, see eval/rejects.jsonl).", ""]
        out += _table(["model", "n pairs", "preference accuracy", "mean γ", "s.e."],
                      [[m["name"], m["pairs"], m["accuracy"], m["mean_margin"], m.get("sem")] for m in ev["models"]]) + [""]
        out += _table(["policy", "reference", "n pairs", "reward margin mean", "s.e.", "reward accuracy"],
                      [[c["policy"], c["reference"], c["pairs"], c["reward_margin_mean"], c.get("sem"),
                        c["reward_accuracy"]] for c in ev["comparisons"]]) + [""]
        if r["scores"] is not None and signal in r["scores"].columns:
            for m in ev["models"]:
                rho = plots.spearman(r["scores"][signal].to_list(), r["scores"][f"gamma_{m['name']}"].to_list())
                out += [f"Spearman ρ(γ of {md(m['name'])}, `{md(signal)}`) = {rho:.3f}", ""]
        out += report_behaviour.behaviour_markdown(r)
    out += length_markdown(r)
    return "\n".join(out)


def comparison_markdown(runs: list[dict]) -> str:
    """Final model of every run on its held-out data, one row per run."""
    rows = [[r["name"], r["label"], report_behaviour.schedule_label(r["meta"]), r["seed"], r["eval"]["data"]["pairs"],
             *(_final_vs_s(r["eval"]).values())] for r in runs if r["eval"]]
    if len(runs) < 2 or not rows:
        return ""
    keys = {r["eval"]["data"].get("key") or r["eval"]["data"]["path"] for r in runs if r["eval"]}
    warn = ["**Warning: these runs were evaluated on different held-out pairs; compare with care.**", ""]
    return "\n".join(["## Runs compared", ""] + (warn if len(keys) > 1 else []) + _table(
        ["run", "label", "reference", "seed", "n pairs", "final model", "preference accuracy", "mean γ", "reward margin vs S",
         "reward accuracy vs S"], rows) + [""])


def summary_markdown(runs: list[dict], signal: str = "judge_confidence", verdict_md: str = "") -> str:
    """The report's short text: the verdict, run comparison, then per run its training and held-out numbers."""
    return "\n".join(["# sDPO report", "", verdict_md, comparison_markdown(runs)] + [run_markdown(r, signal) for r in runs])


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1300px;margin:2em auto;
padding:0 1em;color:#222}h1{border-bottom:2px solid #4C72B0}h2{margin-top:2em;color:#2d4a7a}
figure{margin:1.5em 0;padding:.5em;border:1px solid #ddd;border-radius:6px}img{max-width:100%}
figcaption{color:#555;font-size:.9em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}.note{color:#a05a00}"""


def _md_html(text: str) -> str:
    """HTML for markdown text whose data parts went through `escape.md_cell`: undo the markdown
    escapes and the HTML escaping, then escape once for HTML."""
    return escape.html(html.unescape(re.sub(r"\\([\\|`])", r"\1", text)))


def _md_cells(line: str) -> list[str]:
    """The cells of one markdown table row, split on unescaped `|` (data `|` arrive as `\\|`)."""
    cells, cur, i, text = [], "", 0, line.strip()
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            cur, i = cur + text[i:i + 2], i + 2
            continue
        if text[i] == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    cells.append(cur)
    return cells[1:-1] if len(cells) > 2 else cells  # the outer pipes frame the row


def _md_table_html(lines: list[str]) -> str:
    rows = [_md_cells(ln) for ln in lines if not ln.startswith("|---")]
    head = "".join(f"<th>{_md_html(c.strip())}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{_md_html(c.strip())}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def _markdown_html(md: str) -> str:
    """The tiny subset of markdown that `summary_markdown` writes: headings, tables, paragraphs."""
    parts, table = [], []
    for ln in md.splitlines() + [""]:
        if ln.startswith("|"):
            table.append(ln)
            continue
        if table:
            parts.append(_md_table_html(table))
            table = []
        if ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            parts.append(f"<h{level}>{_md_html(ln[level:].strip())}</h{level}>")
        elif ln.strip():
            text = _md_html(re.sub(r"(?<!\\)`", "", ln))
            parts.append(f"<p class='note'><strong>{text.strip('*')}</strong></p>" if text.startswith("**") else f"<p>{text}</p>")
    return "\n".join(parts)


REPORT_FILES = (".png", ".html", ".md", ".json")


def write_report(run_dirs: list[str | Path], out: str | Path, signal: str = "judge_confidence") -> dict[str, Path]:
    """Write report.html (images inline), one PNG per figure, figures.json and summary.md into `out`.

    Atomically as a folder: everything goes to a temporary sibling folder that replaces `out` at
    the end, so a kill leaves the old report (or none) and no PNG of an older report survives. An
    existing `out` must be a report folder (only report files) or empty: other files are never deleted.
    """
    from sdpo_kit.io import atomic_dir

    final = Path(out)
    if final.exists() and not final.is_dir():
        raise InputError(f"--out {final}", "is a file, not a folder: pass a folder for the report")
    if final.is_dir() and any(final.iterdir()) and not _is_report_folder(final):
        raise UsageError(f"--out {final}", "holds files that are not a report (it would be replaced as a whole); "
                         "pass a new or empty folder")
    runs = [load_run(d) for d in run_dirs]  # bad runs fail before anything is written
    from sdpo_kit.io import check_out_dir

    check_out_dir(final.parent, flag=f"--out {final}: its folder")
    with atomic_dir(final, overwrite=True) as tmp:
        paths = _write_report(runs, tmp, signal)
    return {k: final / Path(v).name for k, v in paths.items()}


def _is_report_folder(folder: Path) -> bool:
    entries = list(folder.iterdir())
    return (folder / "report.html").is_file() and all(p.is_file() and p.suffix in REPORT_FILES for p in entries)


def _write_report(runs: list[dict], out: Path, signal: str = "judge_confidence") -> dict[str, Path]:
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise UsageError(f"two run directories share a name ({names}): figure files would collide.")
    answer = verdict.summary(runs)  # the verdict opens the page and summary.md
    sections, index = [verdict.to_html(answer)], {}
    blocks = [(comparison_markdown(runs), "", comparison_figures(runs), [])]
    blocks += [(run_markdown(r, signal), r["name"] + "_", *run_figures(r, signal)) for r in runs]
    for text, prefix, figs, notes in blocks:
        body = [_markdown_html(text)] + [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
        for f in figs:
            png = out / f"{prefix}{f['name']}.png"
            with atomic_path(png) as tmp:
                tmp.write_bytes(f["png"])
            index[png.stem] = {"png": png.name, "caption": f["caption"], "axes": f["series"]}
            b64 = base64.b64encode(f["png"]).decode()
            stem = escape.html(png.stem)  # the run folder's name is data: never markup in an attribute
            body.append(f"<figure id='{stem}'><img alt='{stem}' src='data:image/png;base64,{b64}'>"
                        f"<figcaption>{html.escape(f['caption'])}</figcaption></figure>")
        sections.append("<section>" + "\n".join(body) + "</section>")
    md = summary_markdown(runs, signal, verdict.markdown(answer))
    write_json(out / "verdict.json", answer)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>sDPO report</title><style>{CSS}</style>"
            f"</head><body><h1>sDPO report</h1>\n" + "\n".join(sections) + "</body></html>")
    return {"html": write_text(out / "report.html", page), "summary": write_text(out / "summary.md", md + "\n"),
            "figures": write_json(out / "figures.json", index)}


def length_figures(run: dict) -> list[dict]:
    """Issue 12: accuracy under summed vs per-token γ, accuracy per length-ratio quintile, and γ of S and
    the final model against ln(chosen/rejected tokens) with the fitted line (eval.json "length")."""
    ev, scores = run["eval"], run["scores"]
    length = (ev or {}).get("length")
    if not length or scores is None or "log_length_ratio" not in scores.columns:
        return []
    names = [m["name"] for m in length["models"]]
    series = [{"model": n, "ratio": scores["log_length_ratio"].to_list(), "gamma": scores[f"gamma_{n}"].to_list()}
              for n in dict.fromkeys([names[0], names[-1]])]
    return [_figure("length", "Difficulty and length on held-out pairs: accuracy under summed γ (RewardBench `sum`) "
                    "and per-token γ (`avg`); accuracy per quintile of ln(chosen/rejected tokens); γ of S and the "
                    "final model against that ratio, with least-squares lines.", 3,
                    lambda a: (plots.plot_accuracy_sum_avg(length["models"], a[0]),
                               plots.plot_accuracy_by_length(length["models"], length["bucket_edges"], a[1]),
                               plots.plot_gamma_vs_length(series, a[2])))]


def length_sentence(r: dict) -> str:
    """One sentence: how much of the run's easy-to-hard order is answer length."""
    rec = (r.get("manifest") or {}).get("length") or {}
    held = ((r.get("eval") or {}).get("length") or {}).get("models") or []
    parts = []
    if rec.get("key") and rec.get("rho_key_length") is not None:
        rho = rec["rho_key_length"]
        parts.append(f"the partitions' ordering key `{escape.md_cell(rec['key'])}` has Spearman ρ {rho:+.2f} with ln(chosen/rejected "
                     f"tokens), so about {rho * rho:.0%} of its rank variance is the length ratio"
                     + (f", and the step index has ρ {rec['rho_step_length']:+.2f}" if rec.get("rho_step_length") is not None else ""))
    if held and held[0].get("rho_length") is not None:
        parts.append(f"on held-out pairs γ of {held[0]['name']} has ρ {held[0]['rho_length']:+.2f} with it")
    if not parts:
        return ""
    return "How much of the order is length: " + "; ".join(parts) + "."


def length_markdown(r: dict) -> list[str]:
    """The run's "Difficulty and length" section: the sentence, then accuracies under sum / avg γ per quintile."""
    sentence = length_sentence(r)
    held = ((r.get("eval") or {}).get("length") or {})
    if not sentence and not held:
        return []
    out = ["### Difficulty and length", ""] + ([sentence, ""] if sentence else [])
    if held:
        edges = held["bucket_edges"]
        head = ["model", "accuracy (sum γ)", "accuracy (per-token γ)", "ρ(γ, ln len ratio)", "slope [nats/unit]"]
        head += [f"Q{i + 1} {lo:+.2f}…{hi:+.2f} (sum/avg)" for i, (lo, hi) in enumerate(edges)]
        rows = [[m["name"], m["accuracy_sum"], m["accuracy_avg"], m["rho_length"], m["slope"]]
                + [f"{q['accuracy_sum']:.2f}/{'–' if q['accuracy_avg'] is None else format(q['accuracy_avg'], '.2f')}"
                   for q in m["quintiles"]] for m in held["models"]]
        out += _table(head, rows) + [""]
    return out


# --- `sdpo report` (config + run): a shim by helper "cli" until helper "report"'s version merges ---
from dataclasses import dataclass, field  # noqa: E402


@dataclass
class ReportConfig:
    """Write one self-contained HTML report (images inline) plus PNGs, figures.json and summary.md."""

    runs: list[str] = field(default_factory=list, metadata={
        "help": "Run directories written by `sdpo train` (several runs are compared).", "positional": True})
    out: str = field(default="report", metadata={"help": "Output folder for report.html, PNGs, summary.md."})
    signal: str = field(default="judge_confidence", metadata={
        "help": "Held-out column used as an external difficulty signal when present."})

    def __post_init__(self):
        if not self.runs:
            raise UsageError("sdpo report", "RUNS is required: one or more run directories written by `sdpo train`")


def run(cfg: ReportConfig) -> dict[str, Path]:
    """`sdpo report`: write the report; print where it and the summary went."""
    paths = write_report(cfg.runs, cfg.out, signal=cfg.signal)  # bad input: one line from the CLI boundary
    print(f"report: {paths['html']}")
    print(f"summary: {paths['summary']}")
    return paths
