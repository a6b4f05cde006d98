"""Loading run folders for `sdpo report`: everything the report shows about one run, read from disk.

    python -c "from sdpo_kit.report.load import load_run; print(sorted(load_run('runs/sdpo')))"

Reads `run.json` (through `sdpo_kit.runs.read_run`), every `step_t/{summary.json,trainer_state.json}`,
the partitions `manifest.json` and `step_t.parquet` named by run.json (else each step's
`reference.parquet`), and `eval/eval.json` + `eval/scores.parquet` written by `sdpo eval`.
Several runs are compared by *label*: run.json `"label"` when present, else the run folder's
name without a trailing `-seedN`/`_seedN`/`-sN` (see `report/html.py`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sdpo_kit.errors import InputError
from sdpo_kit.io import read_json

SEED_SUFFIX = re.compile(r"[-_](?:seed|s)(\d+)$")


def _find(path: str | None, run_dir: Path) -> Path | None:
    """A path written into run.json: as given (absolute or from the cwd), else beside the run."""
    if not path:
        return None
    for candidate in (Path(path), run_dir / path, run_dir.parent / path, run_dir.parent.parent / path):
        if candidate.exists():
            return candidate
    return None


def _step_partition(run_dir: Path, step: dict, trusted: bool = True) -> dict:
    """γ_ref and source counts of the pairs step t trained on.

    From the partition files run.json names (margins under S, as in the data card) when they
    carry a `margin` column and are `trusted` (their digest is the one run.json recorded), else
    from the step's reference.parquet (under the step's reference: M_{t-1}, S or a mix).
    """
    import polars as pl

    files = step.get("partition") or []
    paths = [_find(f, run_dir) for f in ([files] if isinstance(files, str) else files)]
    ok = trusted and paths and all(p and p.is_file() and "margin" in pl.read_parquet_schema(p) for p in paths)
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
    from sdpo_kit.yaml_config import load_yaml_capped

    path = run_dir / "config.yaml"
    seed = (load_yaml_capped(path.read_text(), path) or {}).get("seed") if path.is_file() else None
    return seed if seed is not None else (int(suffix.group(1)) if suffix else None)


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything the report plots for one run directory, read from disk."""
    import polars as pl

    from sdpo_kit.runs import check_eval_files, partitions_unchanged, read_manifest, read_run, read_step_summary

    run_dir = Path(run_dir)
    meta = read_run(run_dir)  # missing, damaged or empty run.json: a one-line InputError
    parts_dir = _find(meta.get("partitions"), run_dir)
    trusted = partitions_unchanged(meta, parts_dir)  # what it draws is what the run trained on
    manifest = read_manifest(parts_dir) if parts_dir is not None and trusted else None
    steps = []
    for s in meta.get("steps", []):
        d = run_dir / s["dir"]
        state = read_json(d / "trainer_state.json") if (d / "trainer_state.json").is_file() else {}
        summary = read_step_summary(d) or {"step": s["step"]}
        steps.append({"step": s["step"], "summary": summary, "log_history": state.get("log_history", []),
                      "partition": _step_partition(run_dir, s, trusted)})
    ev = run_dir / "eval"
    if (ev / "eval.json").is_file():
        check_eval_models(meta, read_json(ev / "eval.json"), ev / "eval.json")
        check_eval_files(run_dir, meta, read_json(ev / "eval.json"), ev)  # its final model, its own scores
    name = run_dir.resolve().name
    m = SEED_SUFFIX.search(name)
    return {
        "dir": str(run_dir), "name": name, "meta": meta, "manifest": manifest, "steps": steps,
        "partitions_changed": not trusted,
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


def final_vs_s(ev: dict) -> dict:
    """The final model's held-out numbers: preference accuracy, and its reward margin/accuracy vs S."""
    final = ev["models"][-1]
    later = [b for b in ev.get("broken", []) if (b.get("step") or 0) >= (final.get("step") or 0)]
    if later:  # the run's real final model diverged or scores non-finite γ: no number to show for it
        return {"model": f"{later[-1]['name']} (broken)", "accuracy": None, "mean_margin": None,
                "reward_margin": None, "reward_accuracy": None}
    vs_s = next((c for c in ev["comparisons"] if c["policy"] == final["name"] and c["reference"] == "S"), {})
    return {"model": final["name"], "accuracy": final["accuracy"], "mean_margin": final["mean_margin"],
            "reward_margin": vs_s.get("reward_margin_mean"), "reward_accuracy": vs_s.get("reward_accuracy")}
