"""The report's answer to "did A beat B on my held-out data?": verdicts, warnings, models side by side.

    sdpo report runs/sdpo runs/dpo --out report/    # the verdict opens report.html and summary.md

Compared pairs of labels: every stepwise label against every `--mode dpo` label (the paper's
baseline); without both kinds, every label against the first one. Per pair, the final models'
γ on the held-out pairs both sides scored are differenced pair by pair and bootstrapped
(`sdpo_kit.stats.paired_bootstrap`: seeds and held-out prompts resampled), and the 95 %
interval decides the wording: "ahead" when it excludes 0, else "not distinguishable".
Warnings: fewer than 100 held-out pairs, one seed, held-out pairs seen in training, and every
held-out pair that was dropped. `runs` are `sdpo_kit.report.load.load_run` dicts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdpo_kit import render
from sdpo_kit.render import to_markdown

MIN_PAIRS = 100
DRAWS = 10_000


def _num(v: float, fmt: str = "+.2f") -> str:
    """A signed number with a real minus sign (the report is read, not parsed)."""
    return format(v, fmt).replace("-", "−")


def _final_gammas(run: dict):
    """pair_id and γ of the run's final model on its held-out pairs, or None without eval."""
    import polars as pl

    if not run["eval"] or run["scores"] is None:
        return None
    final = run["eval"]["models"][-1]["name"]
    if f"gamma_{final}" not in run["scores"].columns:
        return None
    return run["scores"].select("pair_id", pl.col(f"gamma_{final}").alias("gamma"))


def _prompt_of_pair(run: dict) -> dict[str, str]:
    """pair_id -> prompt text from the run's scored held-out pairs (eval/models/S.parquet), {} if absent."""
    import polars as pl

    from sdpo_kit.data import prompt_text

    path = Path(run["dir"]) / "eval" / "models" / "S.parquet"
    try:
        df = pl.read_parquet(path, columns=["pair_id", "prompt"]).select("pair_id", prompt_text().alias("p"))
    except Exception:  # noqa: BLE001 - no file or no prompt column: each pair is its own cluster
        return {}
    return dict(df.iter_rows())


def broken(run: dict) -> str | None:
    """Why a run's final model is no result (a step diverged, or its held-out γ are not finite), or None."""
    import polars as pl

    steps = [s for s in run["meta"].get("steps", []) if s.get("status") == "diverged"]
    if run["meta"].get("status") == "diverged" or steps:
        where = (steps[0].get("diverged") or {}) if steps else {}
        at = f"step {steps[0]['step']} diverged" if steps else "the run diverged"
        return f"{at} in training ({where.get('where', 'non-finite values')}: {where.get('value', 'not finite')})"
    gammas = _final_gammas(run)
    bad = 0 if gammas is None else int((~gammas["gamma"].cast(pl.Float64).is_finite()).sum())
    return f"its final model's held-out γ are not finite on {bad} pairs" if bad else None


def groups(runs: list[dict]) -> dict[str, list[dict]]:
    """label -> the runs of that label that have held-out scores and are not broken, in input order."""
    out: dict[str, list[dict]] = {}
    for r in runs:
        if _final_gammas(r) is not None and broken(r) is None:
            out.setdefault(r["label"], []).append(r)
    return out


def compared_labels(by_label: dict[str, list[dict]]) -> list[tuple[str, str]]:
    """(a, b) label pairs to compare: stepwise vs dpo labels, else every label vs the first."""
    labels = list(by_label)
    dpo = [k for k in labels if by_label[k][0]["meta"].get("mode") == "dpo"]
    other = [k for k in labels if k not in dpo]
    if dpo and other:
        return [(a, b) for a in other for b in dpo]
    return [(a, labels[0]) for a in labels[1:]]


def compare(a_runs: list[dict], b_runs: list[dict], draws: int = DRAWS) -> dict[str, Any]:
    """Paired bootstrap of Δ mean γ (a − b) over the held-out pairs every run of both labels scored."""
    import numpy as np
    import polars as pl

    from sdpo_kit.stats import call, paired_bootstrap

    frames = [_final_gammas(r).rename({"gamma": f"g{i}"}) for i, r in enumerate(a_runs + b_runs)]
    both = frames[0]
    for f in frames[1:]:
        both = both.join(f, on="pair_id", how="inner")
    if both.height == 0:
        return {"pairs": 0}
    cols = [f"g{i}" for i in range(len(frames))]
    a = both.select(cols[:len(a_runs)]).to_numpy().T
    b = both.select(cols[len(a_runs):]).to_numpy().T
    prompts = {}
    for r in a_runs + b_runs:
        prompts.update(_prompt_of_pair(r))
    clusters = np.array([prompts.get(p, p) for p in both["pair_id"].to_list()], dtype=object)
    result = paired_bootstrap(a, b, clusters.astype(str), draws=draws)
    result.pop("draws")
    beta = float(a_runs[0]["meta"].get("beta") or 0.1)
    return {**result, "call": call(result), "beta": beta, "pair_ids": pl.Series(both["pair_id"]).to_list()}


def verdict_line(a: str, b: str, r: dict) -> str:
    """"sdpo vs dpo on 96 held-out pairs: Δ mean γ +0.44 (95 % CI −0.13…+0.96), not distinguishable"."""
    if not r.get("pairs"):
        return f"{a} vs {b}: no held-out pair scored by both, nothing to compare (evaluate both on the same data)."
    word = {"ahead": f"{a} ahead", "behind": f"{b} ahead"}.get(r["call"], "not distinguishable")
    cl = f", {r['clusters']} prompts" if r["clusters"] != r["pairs"] else ""
    return (f"{a} vs {b} on {r['pairs']} held-out pairs{cl}: Δ mean γ {_num(r['mean'])} "
            f"({round(r['level'] * 100)} % CI {_num(r['lo'])}…{_num(r['hi'])}), {word}. "
            f"[n = {r['pairs']} pairs; seeds {r['seeds_a']} vs {r['seeds_b']}; "
            f"Δ reward margin vs S = β·Δγ = {_num(r['beta'] * r['mean'], '+.3f')}]")


def warnings(runs: list[dict], results: list[tuple[str, str, dict]]) -> list[str]:
    """Small held-out sets, single seeds, held-out pairs seen in training."""
    out = []
    sizes = sorted({r["pairs"] for _, _, r in results if r.get("pairs")})
    if sizes and sizes[0] < MIN_PAIRS:
        out.append(f"Only {sizes[0]} held-out pairs (< {MIN_PAIRS}): the interval is wide and only large "
                   "differences can show; evaluate on more held-out pairs for a firmer answer.")
    if any(r.get("pairs") and min(r["seeds_a"], r["seeds_b"]) == 1 for _, _, r in results):
        out.append("One seed per configuration: the interval covers the held-out sample only, not run-to-run "
                   "training noise; train more seeds (--seed N, one run each) to include it.")
    for run in runs:
        if broken(run):
            out.append(f"{run['name']} is broken: {broken(run)}; it is left out of every verdict (retrain it with a "
                       "lower learning rate).")
        o = (run["eval"] or {}).get("data", {}).get("overlap_with_training")
        if o and o.get("any"):
            out.append(f"{run['name']}: {o['any']} of {o['pairs']} held-out pairs were in its training partitions "
                       f"({o['pair_id']} by pair_id, {o['prompt']} by prompt): its held-out numbers are not held-out.")
    return out


def dropped(runs: list[dict]) -> list[str]:
    """One line per run that dropped held-out pairs: how many of how many, and why."""
    out = []
    for run in runs:
        d = (run["eval"] or {}).get("data")
        if not d or not d.get("rejected"):
            continue
        reasons: dict[str, int] = {}
        path = Path(run["dir"]) / "eval" / "rejects.jsonl"
        seen = set()
        for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
            rec = json.loads(line)
            if (rec.get("file"), rec.get("row")) not in seen:
                seen.add((rec.get("file"), rec.get("row")))
                reasons[rec.get("reason", "?")] = reasons.get(rec.get("reason", "?"), 0) + 1
        why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
        out.append(f"{run['name']}: {d['rejected']} of {d['pairs'] + d['rejected']} held-out pairs dropped"
                   + (f" ({why})" if why else "") + "; the numbers use the other "
                   f"{d['pairs']} (eval/rejects.jsonl).")
    return out


def models_rows(runs: list[dict]) -> list[list[Any]]:
    """S once, then every run's M1 … M_T: n, preference accuracy, mean γ ± s.e., reward margin vs S ± s.e."""
    rows, seen_s = [], set()
    for run in runs:
        ev = run["eval"]
        if not ev:
            continue
        vs_s = {c["policy"]: c for c in ev["comparisons"] if c["reference"] == "S"}
        for m in ev["models"]:
            if m["name"] == "S":
                if m.get("fingerprint") in seen_s:
                    continue
                seen_s.add(m.get("fingerprint"))
            c = vs_s.get(m["name"])
            rm = "–" if c is None else f"{_num(c['reward_margin_mean'], '+.3f')} ± {c.get('sem', 0):.3f}"
            rows.append([run["name"] if m["name"] != "S" else "S (start)", m["name"], m["pairs"],
                         f"{m['accuracy']:.3f}", f"{_num(m['mean_margin'])} ± {m.get('sem', 0):.2f}", rm])
    return rows


MODELS_HEADER = ["run", "model", "n pairs", "preference accuracy", "mean γ ± s.e.", "reward margin vs S ± s.e."]
MODELS_INTRO = "Every model on the held-out pairs (S is the start; M_t after step t):"


def answer(runs: list[dict], draws: int = DRAWS) -> dict[str, Any]:
    """Everything the verdict section shows, as data (also written to figures.json's neighbour)."""
    by_label = groups(runs)
    results = [(a, b, compare(by_label[a], by_label[b], draws)) for a, b in compared_labels(by_label)]
    return {"verdicts": [verdict_line(a, b, r) for a, b, r in results],
            "results": [{"a": a, "b": b, **{k: v for k, v in r.items() if k != "pair_ids"}} for a, b, r in results],
            "warnings": warnings(runs, results), "dropped": dropped(runs), "models": models_rows(runs),
            "note": None if results else ("One configuration only: nothing to compare (give `sdpo report` an sDPO "
                                          "and a DPO run evaluated on the same held-out data).")}


def blocks(v: dict) -> list[tuple]:
    """The verdict section as `sdpo_kit.render` blocks: the calls, the note, the warnings, every model."""
    out = [("h2", "Verdict"), *[("call", line) for line in v["verdicts"]]]
    out += [("p", v["note"])] if v["note"] else []
    out += [("alert", w) for w in v["warnings"] + v["dropped"]]
    if v["models"]:
        out += [("p", MODELS_INTRO), ("table", MODELS_HEADER, v["models"])]
    return out


def markdown(v: dict) -> str:
    """The verdict section of summary.md."""
    return to_markdown(blocks(v))


def to_html(v: dict) -> str:
    """The verdict box that opens report.html (every string escaped)."""
    return "<section class='verdict' id='verdict'>" + "\n".join(render.to_html(blocks(v))) + "</section>"
