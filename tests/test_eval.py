"""`sdpo eval`: the summary numbers against naive loops, model selection, and a real run end to end.

    python -m pytest -q tests/test_eval.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from sdpo_kit.cli import app
from sdpo_kit.report.evaluate import EvalConfig, gamma_table, select_models, eval_results


def _naive(gammas: dict[str, list[float]], sources: list[str], beta: float):
    """eval.json's numbers by plain Python loops over pairs."""
    models = {}
    for name, g in gammas.items():
        per = {}
        for src in sorted(set(sources)):
            vals = [v for v, s in zip(g, sources) if s == src]
            per[src] = (len(vals), sum(v > 0 for v in vals) / len(vals), sum(vals) / len(vals))
        models[name] = (len(g), sum(v > 0 for v in g) / len(g), sum(g) / len(g), per)
    comps = {}
    for name in list(gammas)[1:]:
        t = int(name[1:])
        for ref in {"S", f"M{t - 1}" if t > 1 else "S"}:
            rm = [beta * (p - r) for p, r in zip(gammas[name], gammas[ref])]
            comps[(name, ref)] = (sum(rm) / len(rm), sum(v > 0 for v in rm) / len(rm))
    return models, comps


def _table(n=57, names=("S", "M1", "M2", "M3"), seed=0):
    rng = np.random.default_rng(seed)
    sources = [["a", "b", "c"][i % 3] if i % 7 else "b" for i in range(n)]
    pairs = pl.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "prompt": [[{"role": "user", "content": "x"}]] * n,
                          "source": sources, "judge_confidence": rng.uniform(size=n)})
    gammas = {m: (rng.normal(-1 + k, 2, n)).tolist() for k, m in enumerate(names)}
    scored = {m: pl.DataFrame({"pair_id": pairs["pair_id"], "margin": g}) for m, g in gammas.items()}
    return pairs, scored, gammas, sources


def run_record(names: list[str], schedule: str = "stepwise") -> dict:
    """A run.json of len(names) - 1 steps without per-step reference records (as runs before them)."""
    return {"reference_schedule": schedule, "base_model": "S", "steps": [{"step": t, "dir": f"step_{t}"}
                                                                         for t in range(1, len(names))]}


def test_summary_equals_naive_loops():
    pairs, scored, gammas, sources = _table()
    result = eval_results(gamma_table(pairs, scored), list(gammas), 0.25, run_record(list(gammas)))
    models, comps = _naive(gammas, sources, 0.25)
    for m in result["models"]:
        n, acc, mean, per = models[m["name"]]
        assert (m["pairs"], m["accuracy"]) == (n, pytest.approx(acc)) and m["mean_margin"] == pytest.approx(mean)
        assert m["sem"] == pytest.approx(np.std(gammas[m["name"]], ddof=1) / np.sqrt(n))
        assert {k: (v["pairs"], pytest.approx(v["accuracy"]), pytest.approx(v["mean_margin"]))
                for k, v in m["per_source"].items()} == per
    got = {(c["policy"], c["reference"]): (c["reward_margin_mean"], c["reward_accuracy"]) for c in result["comparisons"]}
    assert set(got) == set(comps)  # M1 vs S once; M2, M3 vs S and vs their previous model
    for key, (margin, acc) in comps.items():
        assert got[key] == (pytest.approx(margin), pytest.approx(acc))
    assert [(r["step"], r["reference"]) for r in result["reference_margins"]] == [(1, "S"), (2, "M1"), (3, "M2"), (4, "M3")]
    assert result["table"]["reward_margin_M3_vs_M2"].to_list() == pytest.approx(
        [0.25 * (a - b) for a, b in zip(gammas["M3"], gammas["M2"])])


def test_reference_margins_name_each_schedules_real_reference():
    """A fixed run's M1, M2 are starts, not references: only S may be named; mix's later references
    are weight averages no eval scores, so they are left out rather than mislabelled as M_{t-1}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdpo_kit import plots

    pairs, scored, gammas, _ = _table()
    s_gamma = float(np.mean(gammas["S"]))
    for schedule, want in [("stepwise", [(1, "S"), (2, "M1"), (3, "M2"), (4, "M3")]),
                           ("fixed", [(1, "S"), (2, "S"), (3, "S")]), ("mix", [(1, "S")])]:
        refs = eval_results(gamma_table(pairs, scored), list(gammas), 0.1, run_record(list(gammas), schedule))
        refs = refs["reference_margins"]
        assert [(r["step"], r["reference"]) for r in refs] == want, schedule
        assert refs[0]["mean_margin"] == pytest.approx(s_gamma)
    models = [{"name": n, "mean_margin": -1.0, "sem": 0.1} for n in gammas]
    for schedule in ("fixed", "mix"):
        ax = plots.plot_reference_margins(models, plt.figure().gca(), schedule)
        assert "M_{t-1} is the reference" not in ax.get_xlabel() and "each step's reference" not in ax.get_title()
    assert "M_{t-1} is the reference of step t" in plots.plot_reference_margins(models, plt.figure().gca()).get_xlabel()
    plt.close("all")


def test_reference_margins_follow_run_json_record_not_the_schedule():
    """Eval names step t's reference from run.json's per-step record (runs.step_references): a run
    whose record says S was step 2's reference gets S there, whatever its schedule's name says."""
    from sdpo_kit.runs import reference_record

    pairs, scored, gammas, _ = _table()
    run = run_record(list(gammas))
    run["steps"][0]["reference"] = reference_record(1, "S", "/m/S", "fp0")
    run["steps"][1]["reference"] = reference_record(2, "S", "/m/S", "fp0")
    run["steps"][2]["reference"] = reference_record(3, "mix", "/r/step_3/reference_model", "fpx")
    refs = eval_results(gamma_table(pairs, scored), list(gammas), 0.1, run)["reference_margins"]
    assert [(r["step"], r["reference"]) for r in refs] == [(1, "S"), (2, "S"), (4, "M3")]
    assert refs[1]["mean_margin"] == pytest.approx(float(np.mean(gammas["S"])))


def test_gamma_table_keeps_pairs_every_model_scored_and_scalar_columns():
    pairs, scored, gammas, _ = _table(n=10, names=("S", "M1"))
    scored["M1"] = scored["M1"].filter(pl.col("pair_id") != "p3")  # e.g. a prompt_too_long reject
    table = gamma_table(pairs, scored)
    assert table.height == 9 and "p3" not in table["pair_id"].to_list()
    assert table.columns == ["pair_id", "source", "judge_confidence", "gamma_S", "gamma_M1"]


def test_select_models():
    models = [{"name": n} for n in ("S", "M1", "M2", "M3")]
    assert [m["name"] for m in select_models(models, "all")] == ["S", "M1", "M2", "M3"]
    assert [m["name"] for m in select_models(models, "last")] == ["S", "M2", "M3"]
    assert [m["name"] for m in select_models(models, "M2, S")] == ["S", "M2"]
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['M9'\]"):
        select_models(models, "S,M9")


def test_config_names_the_bad_value(tmp_path):
    EvalConfig(run=str(tmp_path / "nope"), data=str(tmp_path))  # values only: no file is read at construction
    with pytest.raises(ValueError, match="--limit must be >= 1, got 0"):
        EvalConfig(run=str(tmp_path), data=str(tmp_path), limit=0)
    result = CliRunner().invoke(app, ["eval", "--run", str(tmp_path / "nope"), "--data", str(tmp_path)])
    assert result.exit_code == 1 and "no run.json" in result.output  # an input error (exit 1)
    # The scorer's dtypes and lengths, checked by the scorer's one check at parse time, before any run is read.
    for flags, words in [(["--dtype", "float16"], "--dtype: must be one of float32, bfloat16"),
                         (["--max_length", "1"], "--max_length: must be >= 2 tokens"),
                         (["--truncation_mode", "middle"], "--truncation_mode: must be keep_start or keep_end")]:
        result = CliRunner().invoke(app, ["eval", "--run", str(tmp_path / "nope"), "--data", str(tmp_path), *flags])
        assert result.exit_code == 2 and words in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "no run.json" not in result.output


# --- end to end: score -> split -> 2-step train -> eval -> report, on the tiny model ---------------

FAST = ["--max_length", "64", "--per_device_train_batch_size", "2", "--num_train_epochs", "1",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none", "--seed", "0",
        "--save_strategy", "no", "--beta", "0.1", "--lr_scheduler_type", "constant"]


def _cli(*argv) -> str:
    result = CliRunner().invoke(app, [str(a) for a in argv])
    assert result.exit_code == 0, (argv, result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir):
    """A real 2-step sDPO run of the tiny model on 16 AlpacaEval pairs, evaluated on 24 others."""
    from conftest import shared
    from sdpo_kit.data import load_pairs
    from sdpo_kit.models import load_model
    from sdpo_kit.scoring.frame import ScoreConfig, score_frame

    root = tmp_path_factory.mktemp("e2e")
    df = pl.read_parquet(shared("alpaca_eval_pairs.parquet")).filter(
        (pl.col("prompt").str.len_chars() < 200) & (pl.col("chosen") != pl.col("rejected"))).sample(
        fraction=1.0, shuffle=True, seed=0)  # every source in both slices
    df.slice(0, 16).write_parquet(root / "train.parquet")
    df.slice(16, 24).write_parquet(root / "heldout.parquet")
    model, tokenizer = load_model(tiny_model_dir)
    scored, _ = score_frame(load_pairs(root / "train.parquet").pairs, model, tokenizer, ScoreConfig(max_length=64))
    scored.write_parquet(root / "scored.parquet")
    _cli("curate", "split", root / "scored.parquet", "--steps", "2", "--strategy", "easy-to-hard", "--out", root / "parts")
    run = root / "runs" / "sdpo"
    _cli("train", "--partitions", root / "parts", "--model", tiny_model_dir, "--out", run, *FAST)
    first = _cli("eval", "--run", run, "--data", root / "heldout.parquet")
    return {"root": root, "run": run, "heldout": root / "heldout.parquet", "eval_output": first,
            "model": tiny_model_dir}


@pytest.mark.slow
def test_eval_on_real_run_matches_scorer_and_caches(pipeline):
    from sdpo_kit.data import load_pairs
    from sdpo_kit.models import load_model
    from sdpo_kit.scoring.frame import ScoreConfig, score_frame

    run = pipeline["run"]
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert [m["name"] for m in ev["models"]] == ["S", "M1", "M2"]
    meta = json.loads((run / "run.json").read_text())
    assert [m["fingerprint"] for m in ev["models"]] == [meta["base_fingerprint"]] + [
        s["model_fingerprint"] for s in meta["steps"]]
    # Oracle: the scorer's own two-model mode (policy M2, reference M1) on the same held-out pairs.
    pairs = load_pairs(pipeline["heldout"]).pairs
    policy, _ = load_model(run / "step_2" / "model")
    ref, tokenizer = load_model(run / "step_1" / "model")
    oracle, _ = score_frame(pairs, ref, tokenizer, ScoreConfig(max_length=64, beta=0.1), policy=policy)
    comp = next(c for c in ev["comparisons"] if (c["policy"], c["reference"]) == ("M2", "M1"))
    assert comp["reward_margin_mean"] == pytest.approx(oracle["reward_margin"].mean(), abs=1e-4)
    assert comp["reward_accuracy"] == pytest.approx(oracle["reward_correct"].mean())
    m1 = next(m for m in ev["models"] if m["name"] == "M1")
    assert m1["mean_margin"] == pytest.approx(oracle["margin"].mean(), abs=1e-4)
    assert m1["accuracy"] == pytest.approx((oracle["margin"] > 0).mean())
    for src, stats in m1["per_source"].items():
        assert stats["pairs"] == oracle.filter(pl.col("source") == src).height
    scores = pl.read_parquet(run / "eval" / "scores.parquet")
    assert scores.height == ev["data"]["pairs"] == oracle.height and "judge_confidence" in scores.columns
    assert sum(s["pairs"] for s in m1["per_source"].values()) == oracle.height and len(m1["per_source"]) > 1
    # Pairs whose prompt alone fills max_length (64) are dropped as counted rejects, never silently.
    rejects = [json.loads(ln) for ln in (run / "eval" / "rejects.jsonl").read_text().splitlines()]
    assert ev["data"]["rejected"] == 24 - oracle.height == len({r["row"] for r in rejects})
    assert {r["reason"] for r in rejects} <= {"prompt_too_long"} and {r["model"] for r in rejects} <= {"S", "M1", "M2"}
    # A rerun scores nothing: every model comes from the fingerprint cache, same numbers.
    before = {p.name: p.stat().st_mtime_ns for p in (run / "eval" / "models").iterdir()}
    again = _cli("eval", "--run", run, "--data", pipeline["heldout"])
    assert again.count("cached") == 3 and "scoring" not in again and "scoring" in pipeline["eval_output"]
    assert {p.name: p.stat().st_mtime_ns for p in (run / "eval" / "models").iterdir()} == before
    assert json.loads((run / "eval" / "eval.json").read_text())["models"] == ev["models"]


@pytest.mark.slow
def test_eval_of_another_run_reuses_s_from_the_pair_cache(pipeline):
    """Runs sharing S (DPO vs sDPO arms, seeds) score its held-out pairs once in all."""
    run = pipeline["run"]
    meta = json.loads((run / "run.json").read_text())
    ev = json.loads((run / "eval" / "eval.json").read_text())
    other = pipeline["root"] / "runs" / "other"
    other.mkdir()
    (other / "run.json").write_text(json.dumps(meta | {"steps": []}))
    cache = Path(os.environ["SDPO_KIT_CACHE"]) / "scores"
    entries = sorted(cache.rglob("*.parquet"))
    _cli("eval", "--run", other, "--data", pipeline["heldout"], "--max-length", "64")
    assert sorted(cache.rglob("*.parquet")) == entries  # nothing new was scored
    assert json.loads((other / "eval" / "eval.json").read_text())["models"][0]["mean_margin"] == ev["models"][0]["mean_margin"]


@pytest.mark.slow
def test_report_on_real_run_has_every_figure_and_series(pipeline):
    run, out = pipeline["run"], pipeline["root"] / "report"
    output = _cli("report", run, "--out", out)
    assert f"report: {out / 'report.html'}" in output
    figs = json.loads((out / "figures.json").read_text())
    assert set(figs) == {f"sdpo_{n}" for n in ("reward_margin", "loss_accuracy", "partitions", "reference_margins",
                                               "difficulty", "length")}
    page = (out / "report.html").read_text()
    for name, f in figs.items():
        assert (out / f["png"]).is_file() and f"id='{name}'><img alt='{name}' src='data:image/png;base64," in page
    assert (out / "summary.md").read_text().startswith("# sDPO report")
    for t in (1, 2):  # training curves are the trainer's own log history
        logs = [r for r in json.loads((run / f"step_{t}" / "trainer_state.json").read_text())["log_history"]
                if "loss" in r]
        timeline, _ = figs["sdpo_reward_margin"]["axes"]
        line = next(ln for ln in timeline["lines"] if ln["label"] == f"step {t}")
        assert line["y"] == pytest.approx([r["rewards/margins"] for r in logs])
        loss = next(ln for ln in figs["sdpo_loss_accuracy"]["axes"][0]["lines"] if ln["label"] == f"step {t}")
        assert loss["y"] == pytest.approx([r["loss"] for r in logs])
        assert loss["y"][0] == pytest.approx(np.log(2), abs=1e-3)  # each step starts at its reference
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert figs["sdpo_reference_margins"]["axes"][0]["bars"][0]["values"] == pytest.approx(
        [m["mean_margin"] for m in ev["models"]])
    parts = [pl.read_parquet(pipeline["root"] / "parts" / f"step_{t}.parquet") for t in (1, 2)]
    hists = figs["sdpo_partitions"]["axes"][0]["hists"]
    assert [sum(h["counts"]) for h in hists] == [p.height for p in parts]


@pytest.mark.slow
def test_report_screenshot_in_headless_chromium(pipeline):
    from test_report import assert_not_blank, screenshot_or_skip

    out = pipeline["root"] / "report_shot"
    _cli("report", pipeline["run"], "--out", out)
    assert_not_blank(screenshot_or_skip(out / "report.html", out / "screenshot.png"))


def test_eval_without_recorded_fingerprint_hashes_weights_and_caches(tmp_path, tiny_model_dir):
    from conftest import shared
    from sdpo_kit.models import load_model, model_fingerprint

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"mode": "stepwise", "base_model": str(tiny_model_dir),
                                              "base_fingerprint": None, "beta": 0.1, "steps": []}))
    pl.read_parquet(shared("alpaca_eval_pairs.parquet")).filter(pl.col("prompt").str.len_chars() < 150).head(6) \
        .write_parquet(tmp_path / "heldout.parquet")
    argv = ["eval", "--run", run, "--data", tmp_path / "heldout.parquet", "--max-length", "96", "--models", "S"]
    assert "scoring S" in _cli(*argv)
    assert "S: cached" in _cli(*argv)
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert ev["models"][0]["fingerprint"] == model_fingerprint(load_model(tiny_model_dir)[0])
    assert ev["comparisons"] == [] and ev["config"]["max_length"] == 96
