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
summary.md and HTML for report.html by `sdpo_kit.render` (the one renderer and stylesheet of
report, verdict and cards), every string from data escaped for its format. Runs are read by `load.py`, figures chosen by `figures.py` and drawn by
`sdpo_kit.plots`; the verdict is `verdict.py`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from sdpo_kit import escape
from sdpo_kit.errors import InputError, UsageError
from sdpo_kit import plots
from sdpo_kit.render import page, text, to_html, to_markdown
from sdpo_kit.io import write_json, write_text
from sdpo_kit.report import verdict
from sdpo_kit.report.figures import comparison_figures, run_figures
from sdpo_kit.report.load import final_vs_s, load_run
from sdpo_kit.runs import run_schedule, step_references


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
    paths = write_report(cfg)  # bad input: one line from the CLI boundary
    print(f"report: {escape.term(paths['html'])}")
    print(f"summary: {escape.term(paths['summary'])}")
    return paths


# ---------------------------------------------------------------- text: blocks (`sdpo_kit.render`), as markdown and as HTML

STEP_KEYS = ("pairs", "ref_margin_mean", "loss_first", "sigmoid_loss_end", "reward_margin_end", "reward_accuracy_end")


def run_blocks(r: dict, signal: str) -> list[tuple]:
    """One run's text: settings, per-step training numbers, reference schedule, held-out numbers,
    behaviour, difficulty and length."""
    meta = r["meta"]
    out = [("h2", r["name"]),
           ("p", "mode `{}`, base model `{}`, β = {}, status `{}`, label `{}`, seed {}", meta.get("mode"),
            meta.get("base_model"), meta.get("beta"), meta.get("status"), r["label"], text(r["seed"])),
           ("p", "End-of-step loss, reward margin and accuracy are over the whole partition after the step "
                 "(M_t against the step's reference, as run.json records it: the reference table below)."),
           ("table", ["step", "pairs", "γ_ref mean (under the step's reference)", "loss first", "sigmoid loss end",
                      "reward margin end", "reward accuracy end"],
            [[text(v) for v in (s["step"], *map(s["summary"].get, STEP_KEYS))] for s in r["steps"]])]
    out += reference_blocks(r)
    ev = r["eval"]
    if ev:
        d = ev["data"]
        out += [("p", "Held-out: `{}`, {} pairs scored by every model ({} dropped, see eval/rejects.jsonl).",
                 d["path"], d["pairs"], d.get("rejected", 0)),
                ("table", ["model", "n pairs", "preference accuracy", "mean γ", "s.e."],
                 [[text(v) for v in (m["name"], m["pairs"], m["accuracy"], m["mean_margin"], m.get("sem"))]
                  for m in ev["models"]]),
                ("table", ["policy", "reference", "n pairs", "reward margin mean", "s.e.", "reward accuracy"],
                 [[text(v) for v in (c["policy"], c["reference"], c["pairs"], c["reward_margin_mean"], c.get("sem"),
                                      c["reward_accuracy"])] for c in ev["comparisons"]])]
        if r["scores"] is not None and signal in r["scores"].columns:
            for m in ev["models"]:
                rho = plots.rank_rho(r["scores"][signal].to_list(), r["scores"][f"gamma_{m['name']}"].to_list())
                out.append(("p", "Spearman ρ(γ of {}, `{}`) = {}", m["name"], signal, f"{rho:.3f}"))
        out += behaviour_blocks(r)
    return out + length_blocks(r)


def comparison_blocks(runs: list[dict]) -> list[tuple]:
    """Final model of every run on its held-out data, one row per run."""
    rows = [[text(v) for v in (r["name"], r["label"], schedule_label(r["meta"]), r["seed"], r["eval"]["data"]["pairs"],
                                *final_vs_s(r["eval"]).values())] for r in runs if r["eval"]]
    if len(runs) < 2 or not rows:
        return []
    keys = {r["eval"]["data"].get("key") or r["eval"]["data"]["path"] for r in runs if r["eval"]}
    warn = [("warn", "Warning: these runs were evaluated on different held-out pairs; compare with care.")]
    return [("h2", "Runs compared"), *(warn if len(keys) > 1 else []), ("table", [
        "run", "label", "reference", "seed", "n pairs", "final model", "preference accuracy", "mean γ",
        "reward margin vs S", "reward accuracy vs S"], rows)]


def summary_markdown(runs: list[dict], signal: str, verdict_md: str = "") -> str:
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
    schedule = run_schedule(meta)
    return f"mix α={meta.get('ref_mix_alpha')}" if schedule == "mix" else schedule


def reference_blocks(r: dict) -> list[tuple]:
    """Per step: the schedule, the reference as run.json records it (`runs.step_references`: S, M_{t-1}
    or a mix average), its fingerprint and how its exactness was checked."""
    refs, rows = {ref["step"]: ref for ref in step_references(r["meta"])}, []
    for s in r["steps"]:
        summary, ref = s["summary"], refs.get(s["step"], {})
        check = summary.get("reference_check") or {}
        how = (f"re-scored {check.get('pairs')} pairs, max |Δ| {check.get('max_abs_diff', 0):.2g}"
               if check.get("kind") == "rescored" else "first-step rewards 0 (reference = start)")
        name = ref.get("model") or ("average of M_{t-1} and ref_{t-1}" if ref.get("kind") == "mix" else None)
        rows.append([str(v) for v in (s["step"], schedule_label(r["meta"]), name,
                                      ref.get("fingerprint") or summary.get("reference_fingerprint"),
                                      summary.get("reference_exact"), how)])
    head = ["step", "reference schedule", "reference", "reference fingerprint", "exact", "check"]
    return [("table", head, rows)] if rows else []


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
        rows = [[text(v) for v in (m["name"], m["accuracy_sum"], m["accuracy_avg"], m["rho_length"], m["slope"])]
                + [f"{q['accuracy_sum']:.2f}/{'–' if q['accuracy_avg'] is None else format(q['accuracy_avg'], '.2f')}"
                   for q in m["quintiles"]] for m in held["models"]]
        out.append(("table", head, rows))
    return out


# ---------------------------------------------------------------- the report folder

REPORT_FILES = (".png", ".html", ".md", ".json")


def write_report(cfg: ReportConfig) -> dict[str, Path]:
    """Write report.html (images inline), one PNG per figure, figures.json and summary.md into `cfg.out`
    for the runs `cfg.runs` (`cfg.signal`: the held-out difficulty column).

    Atomically as a folder: everything goes to a temporary sibling folder that replaces `out` at
    the end, so a kill leaves the old report (or none) and no PNG of an older report survives. An
    existing `out` must be a report folder (only report files) or empty: other files are never deleted.
    """
    from sdpo_kit.io import atomic_dir, check_out_dir, folder_lock
    from sdpo_kit.owner import OWNER_FILE, claim_folder, write_owner

    final = Path(cfg.out)
    if final.exists() and not final.is_dir():
        raise InputError(f"--out {final}", "is a file, not a folder: pass a folder for the report")
    with folder_lock(final, COMMAND):
        claim_folder(final, COMMAND, True, inputs=cfg.runs)  # a report replaces its own folder, nothing else
        entries = [p for p in final.iterdir() if p.name != OWNER_FILE] if final.is_dir() else []
        is_report = (final / "report.html").is_file() and all(p.is_file() and p.suffix in REPORT_FILES for p in entries)
        if entries and not is_report:
            raise UsageError(f"--out {final}", "holds files that are not a report (it would be replaced as a whole); "
                             "pass a new or empty folder")
        runs = [load_run(d) for d in cfg.runs]  # bad runs fail before anything is written
        check_signal(runs, cfg.signal)
        check_out_dir(final.parent, flag=f"--out {final}: its folder")
        with atomic_dir(final, overwrite=True) as tmp:
            paths = _write_report(runs, tmp, cfg.signal)
            write_owner(tmp, COMMAND)
    return {k: final / Path(v).name for k, v in paths.items()}


COMMAND = "sdpo report"


def check_signal(runs: list[dict], signal: str) -> None:
    """`--signal` must name a numeric held-out column where present (a rank correlation with γ):
    a text column such as `source` is one UsageError line, not a plotting traceback."""
    import polars as pl

    for r in runs:
        scores = r["scores"]
        if scores is not None and signal in scores.columns:
            dtype = scores.schema[signal]
            if not (dtype.is_numeric() or dtype == pl.Boolean):
                raise UsageError(f"--signal {signal}", f"{r['dir']}/eval/scores.parquet holds it as {dtype}, not "
                                 "numbers: pick a numeric held-out column (default judge_confidence)")


def _write_report(runs: list[dict], out: Path, signal: str) -> dict[str, Path]:
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise UsageError(f"two run directories share a name ({names}): figure files would collide.")
    answer = verdict.answer(runs)  # the verdict opens the page and summary.md
    sections, index = [verdict.to_html(answer)], {}
    parts = [(comparison_blocks(runs), "", comparison_figures(runs), [])]
    parts += [(run_blocks(r, signal), r["name"] + "_", *run_figures(r, signal)) for r in runs]
    for blocks, prefix, figs, notes in parts:
        body = to_html(blocks + [("note", "{}", n) for n in notes])
        for f in figs:
            png = out / f"{prefix}{f['name']}.png"
            drawn = plots.save_figure(f["draw"], png, ncols=f["ncols"])
            index[png.stem] = {"png": png.name, "caption": f["caption"], "axes": drawn["series"]}
            b64 = base64.b64encode(drawn["png"]).decode()
            stem = escape.html(escape.visible(png.stem))  # the run folder's name is data: never markup in an attribute
            body.append(f"<figure id='{stem}'><img alt='{stem}' src='data:image/png;base64,{b64}'>"
                        f"<figcaption>{escape.html(escape.visible(f['caption']))}</figcaption></figure>")
        sections.append("<section>" + "\n".join(body) + "</section>")
    md = summary_markdown(runs, signal, verdict.markdown(answer))
    write_json(out / "verdict.json", answer)
    return {"html": write_text(out / "report.html", page("sDPO report", sections)),
            "summary": write_text(out / "summary.md", md + "\n"),
            "figures": write_json(out / "figures.json", index)}
