"""Report sections for the reference schedule and `sdpo eval --generate` (used by sdpo_kit/report/html.py).

    sdpo report runs/sdpo runs/fixed --out report/

Every string from data (answers, prompts) goes through `escape.md_cell` (HTML-escaped, `|` and
newlines neutralised) before it reaches the markdown that report.py turns into HTML.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdpo_kit import escape

ANSWER_CHARS = 400  # side-by-side cells are cut here (the full answers are in eval/generations.jsonl)
SIDE_BY_SIDE = 3


def schedule_label(meta: dict) -> str:
    """The run's reference schedule in words: `stepwise`, `fixed`, `mix α=0.5`, or `S (dpo)`."""
    if meta.get("mode") == "dpo":
        return "S (dpo)"
    schedule = meta.get("reference_schedule") or "stepwise"  # runs before the schedule flag were stepwise
    return f"mix α={meta.get('ref_mix_alpha')}" if schedule == "mix" else schedule


def reference_markdown(r: dict) -> list[str]:
    """Per step: the reference's schedule, fingerprint and how its exactness was checked."""
    rows = []
    for s in r["steps"]:
        summary = s["summary"]
        check = summary.get("reference_check") or {}
        how = (f"re-scored {check.get('pairs')} pairs, max |Δ| {check.get('max_abs_diff', 0):.2g}"
               if check.get("kind") == "rescored" else "first-step rewards 0 (reference = start)")
        rows.append(f"| {s['step']} | {escape.md_cell(schedule_label(r['meta']))} | "
                    f"{escape.md_cell(summary.get('reference_fingerprint'))} | {escape.md_cell(summary.get('reference_exact'))} "
                    f"| {escape.md_cell(how)} |")
    if not rows:
        return []
    return ["| step | reference schedule | reference fingerprint | exact | check |", "|---|---|---|---|---|", *rows, ""]


def behaviour_markdown(r: dict) -> list[str]:
    """Length drift per model (S, M1, ...) and three prompts side by side (S vs the final model)."""
    b = (r.get("eval") or {}).get("behaviour")
    if not b:
        return []
    models = b["models"]
    base = models.get("S", {}).get("mean_tokens")
    out = [f"Behaviour on {b['prompts']} held-out prompts ({escape.md_cell(b['decoding'])}, at most "
           f"{b['max_new_tokens']} new tokens; answers in eval/generations.jsonl).", "",
           "| model | mean answer tokens | length drift vs S | cut at limit | distinct-2 | KL vs S (nats/token) |",
           "|---|---|---|---|---|---|"]
    for name, m in models.items():
        drift = None if base is None or m.get("mean_tokens") is None else m["mean_tokens"] - base
        out.append("| " + " | ".join([escape.md_cell(name), _num(m.get("mean_tokens")), _num(drift, "+.1f"),
                                       _num(m.get("cut_share"), ".2f"), _num(m.get("distinct_2"), ".3f"),
                                       _num(m.get("kl_vs_S"), "+.4f")]) + " |")
    return out + [""] + side_by_side(Path(r["dir"]) / "eval" / b.get("generations", "generations.jsonl"), list(models))


def side_by_side(path: Path, names: list[str]) -> list[str]:
    """The first three prompts with S's and the final model's answers, escaped."""
    if not path.is_file() or len(names) < 2:
        return []
    rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    final = names[-1]
    by = {(x["model"], x["prompt_id"]): x for x in rows}
    ids = list(dict.fromkeys(x["prompt_id"] for x in rows if x["model"] == "S"))[:SIDE_BY_SIDE]
    out = [f"| prompt | S | {escape.md_cell(final)} |", "|---|---|---|"]
    for pid in ids:
        prompt = by[("S", pid)]["prompt"]
        text = " / ".join(str(m.get("content", "")) for m in prompt) if isinstance(prompt, list) else str(prompt)
        answers = [by.get((n, pid), {}).get("answer", "") for n in ("S", final)]
        out.append("| " + " | ".join(escape.md_cell(_cut(t)) for t in [text, *answers]) + " |")
    return out + [""]


def _cut(text: str) -> str:
    return text if len(text) <= ANSWER_CHARS else text[:ANSWER_CHARS] + " …"


def _num(v, fmt: str = ".1f") -> str:
    return "–" if v is None else format(v, fmt)
