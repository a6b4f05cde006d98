"""analysis/reproduce_sdpo.py: the prompt split, the table, and the whole experiment on the tiny model.

    python -m pytest -q tests/test_analysis.py
"""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import REPO, shared


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "analysis" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rep():
    return _script("reproduce_sdpo")


@pytest.fixture(scope="module")
def compare():
    return _script("compare")


def _prompts(path: Path) -> set[str]:
    df = pl.read_parquet(path)
    return set(df["prompt"].list.last().struct.field("content").to_list())


def test_prompt_split_is_disjoint_seeded_and_complete(rep):
    from sdpo_kit.data import load_pairs

    pairs = load_pairs(shared("alpaca_eval_pairs.parquet"), limit=3000).pairs
    common = {"heldout_prompt_share": 0.2, "val_prompt_share": 0.1}
    a, b, c = (rep.split_prompts(pairs, common, s) for s in (0, 0, 1))
    assert a == b and a != c
    sides = [set(a[k]) for k in ("train", "val", "heldout")]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    everyone = set(pairs["prompt"].list.last().struct.field("content").to_list())
    assert set().union(*sides) == everyone
    assert len(sides[2]) == round(0.2 * len(everyone)) and len(sides[1]) == round(0.1 * len(everyone))


def test_table_is_mean_and_sample_sd_over_seeds(rep):
    def row(label, seed, acc):
        return {"label": label, "seed": seed, "final": "M1", "heldout_pairs": 10, "S_accuracy": 0.4, "S_mean_gamma": -3.0,
                "accuracy": acc, "mean_gamma": acc - 1, "reward_accuracy_vs_S": acc, "reward_margin_vs_S": 0.1,
                "steps": 1, "optimizer_steps": 4, "train_seconds": 10.0, "per_source": {"x": {"accuracy": acc, "pairs": 10,
                                                                                  "reward_accuracy_vs_S": acc}},
                "S_per_source": {"x": 0.4}, "model_gamma": {"S": -3.0, "M1": acc}}

    accs = [0.5, 0.6, 0.8]
    md = rep.table_markdown([row("dpo", s, a) for s, a in enumerate(accs)] + [row("one", 0, 0.7)])
    expected = f"{statistics.mean(accs):.3f} ± {statistics.stdev(accs):.3f}"
    dpo_line = next(line for line in md.splitlines() if line.startswith("| dpo (M1) | 3 |"))
    assert expected in dpo_line
    assert "| one (M1) | 1 | 0.700 |" in md


def test_bootstrap_resamples_whole_prompts(compare):
    # One seed each, two prompts: "p" with one pair of difference 1, "q" with two pairs of 3.
    # A draw picks two prompts: {p,p} -> 1, {q,q} -> 3, {p,q} -> (1+3+3)/3 = 7/3; nothing else.
    a, b = np.array([[1.0, 3.0, 3.0]]), np.zeros((1, 3))
    r = compare.two_level_bootstrap(a, b, np.array(["p", "q", "q"]), draws=4000)
    assert r["mean"] == pytest.approx(7 / 3)
    assert set(np.round(r["draws"], 9)) == {1.0, 3.0, round(7 / 3, 9)}
    assert (r["lo"], r["hi"]) == (1.0, 3.0)  # each extreme has probability 1/4 > 2.5%
    assert r["clusters"] == 2 and r["pairs"] == 3


def test_bootstrap_resamples_seeds(compare):
    # One pair; arm a's two seeds give γ 0 and 2, b gives 0: a draw averages two resampled seeds,
    # so it is 0 (p=1/4), 1 (p=1/2) or 2 (p=1/4); with a single seed the interval collapses.
    r = compare.two_level_bootstrap(np.array([[0.0], [2.0]]), np.zeros((1, 1)), np.array(["p"]), draws=4000)
    assert r["mean"] == 1.0 and set(r["draws"]) == {0.0, 1.0, 2.0} and (r["lo"], r["hi"]) == (0.0, 2.0)
    assert abs((r["draws"] == 1.0).mean() - 0.5) < 0.05
    one = compare.two_level_bootstrap(np.array([[2.0]]), np.zeros((1, 1)), np.array(["p"]), draws=100)
    assert (one["lo"], one["hi"], one["p_positive"]) == (2.0, 2.0, 1.0)


def _answers_run(root: Path, name: str, label: str, final: str, answers: dict[str, list[tuple[int, bool]]]) -> Path:
    """A run folder with only what compare.length_markdown reads: run.json, eval.json, generations.jsonl."""
    d = root / name
    (d / "eval").mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"label": label}))
    (d / "eval" / "eval.json").write_text(json.dumps({"models": [{"name": "S"}, {"name": final}], "behaviour": {}}))
    rows = [{"model": m, "prompt_id": f"p{i}", "tokens": t, "cut": c} for m, xs in answers.items() for i, (t, c) in enumerate(xs)]
    (d / "eval" / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_length_table_by_hand(compare, tmp_path):
    # Two prompts, limit 8. S: 4 and 8 (cut). dpo seeds: (6, 8cut) and (8cut, 8cut) -> mean tokens 7.5,
    # cut share 0.75. arm x (one seed, its final model M3): (8cut, 8cut) -> 8, 1.0.
    # x − dpo: +0.5 tokens, +0.25 cut share; dpo − S: 7.5 − 6 = +1.5 tokens, 0.75 − 0.5 = +0.25.
    s = [(4, False), (8, True)]
    dirs = [_answers_run(tmp_path, "dpo-seed0", "dpo", "M1", {"S": s, "M1": [(6, False), (8, True)]}),
            _answers_run(tmp_path, "dpo-seed1", "dpo", "M1", {"S": s, "M1": [(8, True), (8, True)]}),
            _answers_run(tmp_path, "x-seed0", "x", "M3", {"S": s, "M1": [(1, False)] * 2, "M3": [(8, True)] * 2})]
    md = compare.length_markdown(dirs, draws=200)
    x = next(ln for ln in md.splitlines() if ln.startswith("| x − dpo |"))
    assert x.startswith("| x − dpo | 1 vs 2 | 2 | +0.5 | ") and "| +0.25 | " in x  # M1 of x is not its final model
    d = next(ln for ln in md.splitlines() if ln.startswith("| dpo − S |"))
    assert d.startswith("| dpo − S | 2 vs 1 | 2 | +1.5 | ") and "| +0.25 | " in d
    assert compare.length_markdown(dirs[:2], base="x") == ""  # no such baseline: no table


@pytest.mark.slow
def test_smoke_budget_end_to_end_then_resumes_without_retraining(rep, tiny_model_dir, tmp_path):
    shared("alpaca_eval_pairs.parquet")
    root, results = tmp_path / "root", tmp_path / "results"
    argv = ["--budget", "smoke", "--model", str(tiny_model_dir), "--root", str(root), "--results", str(results),
            "--arms", "dpo,sdpo_by_source"]
    assert rep.main(argv) == 0

    data = root / "data"
    train, val, held = (_prompts(data / f"{s}.parquet") for s in ("train", "val", "heldout"))
    assert not (train & held or val & held or train & val)
    out = json.loads((results / "results.json").read_text())
    runs = {r["label"]: r for r in out["runs"]}
    assert set(runs) == {"dpo", "sdpo-by-source"}
    # Equal data: both arms trained on every training pair the scorer kept.
    kept = pl.read_parquet(data / "train_scored.parquet").height
    assert runs["dpo"]["train_pairs"] == runs["sdpo-by-source"]["train_pairs"] == kept
    assert runs["dpo"]["final"] == "M1" and runs["sdpo-by-source"]["final"] == "M3"

    # by-source: steps follow S's reward accuracy per source, highest first (the paper's order).
    manifest = json.loads((root / "partitions" / "sdpo-by-source-seed0" / "manifest.json").read_text())
    order = [s["source"] for s in manifest["params"]["source_order"]]
    firsts = [min(order.index(src) for src in step["sources"]) for step in manifest["steps"]]
    assert firsts == sorted(firsts)

    # The table's numbers are the naive formulas over the per-pair scores.
    run_dir = root / "runs" / "sdpo-by-source-seed0"
    scores = pl.read_parquet(run_dir / "eval" / "scores.parquet")
    r = runs["sdpo-by-source"]
    assert r["accuracy"] == pytest.approx(float((scores["gamma_M3"] > 0).mean()))
    assert r["mean_gamma"] == pytest.approx(float(scores["gamma_M3"].mean()))
    assert r["reward_accuracy_vs_S"] == pytest.approx(float((scores["gamma_M3"] > scores["gamma_S"]).mean()))
    assert [r["model_gamma"][n] for n in ("S", "M1", "M2")] == pytest.approx(
        [float(scores[f"gamma_{n}"].mean()) for n in ("S", "M1", "M2")])
    # The arm-vs-arm line is the plain mean over pairs of the two final models' γ difference.
    dpo = pl.read_parquet(root / "runs" / "dpo-seed0" / "eval" / "scores.parquet").select("pair_id", "gamma_M1")
    both = scores.join(dpo, on="pair_id", suffix="_dpo")
    assert both.height == scores.height
    line = next(ln for ln in (results / "table.md").read_text().splitlines() if ln.startswith("| sdpo-by-source − dpo |"))
    assert f"| {float((both['gamma_M3'] - both['gamma_M1_dpo']).mean()):+.2f} | [" in line and "| 1 vs 1 |" in line
    meta = json.loads((run_dir / "run.json").read_text())
    assert (meta["label"], meta["seed"], meta["status"]) == ("sdpo-by-source", 0, "done")
    assert (results / "report" / "report.html").is_file() and (results / "table.md").is_file()

    # Rerun: every run is skipped (weights untouched) and the table comes out identical.
    weights = sorted(root.glob("runs/*/step_*/model/model.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in weights]
    table = (results / "table.md").read_text()
    assert rep.main(argv) == 0
    assert [p.stat().st_mtime_ns for p in weights] == stamps and len(weights) == 4
    assert (results / "table.md").read_text() == table


@pytest.mark.slow
def test_smoke_factorial_arms_share_partitions_and_record_schedules(rep, tiny_model_dir, tmp_path):
    """Issue 13: sdpo-random and sdpo-random-fixed train on the same partitions; fixed keeps S as every
    step's reference; the behaviour measures reach results.json and table.md."""
    from sdpo_kit.models import load_model, model_fingerprint

    root, results = tmp_path / "root", tmp_path / "results"
    argv = ["--budget", "smoke", "--model", str(tiny_model_dir), "--root", str(root), "--results", str(results),
            "--arms", "sdpo_random,sdpo_random_fixed"]
    assert rep.main(argv) == 0
    runs = {r["label"]: r for r in json.loads((results / "results.json").read_text())["runs"]}
    assert runs["sdpo-random"]["reference_schedule"] == "stepwise"
    assert runs["sdpo-random-fixed"]["reference_schedule"] == "fixed"
    metas = {lab: json.loads((root / "runs" / f"{lab}-seed0" / "run.json").read_text()) for lab in runs}
    assert metas["sdpo-random"]["partitions"] == metas["sdpo-random-fixed"]["partitions"]  # the same folder
    base = model_fingerprint(load_model(tiny_model_dir)[0])
    assert [s["reference_fingerprint"] for s in runs["sdpo-random-fixed"]["step_partitions"]] == [base] * 3
    stepwise = metas["sdpo-random"]["steps"]
    assert [s["reference_fingerprint"] for s in stepwise] == [base] + [s["model_fingerprint"] for s in stepwise[:2]]
    for r in runs.values():
        b = r["behaviour"]
        assert b["prompts"] == 2 and b["max_new_tokens"] == 8 and b["models"]["S"]["kl_vs_S"] == 0.0
        assert set(b["models"]) == {"S", "M1", "M2", "M3"}  # smoke: every model of seed 0
    table = (results / "table.md").read_text()
    assert "| sdpo-random − sdpo-random-fixed |" in table and "Behaviour: answers to 2 held-out prompts" in table


def test_unknown_split_option_stops_before_training(rep):
    with pytest.raises(SystemExit, match="analysis/configs/x.yaml: split .* is not supported by this sdpo_kit"):
        rep.check_split("x", {"split": {"strategy": "random", "steps": 3, "no_such_option": True}})
