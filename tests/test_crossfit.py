"""`sdpo curate crossfit` on the tiny model: 2 folds x 2 seeds over real AlpacaEval pairs.

    python -m pytest -q tests/test_crossfit.py

The pairs share prompts two by two (so "no prompt in two folds" can fail) and come from two
sources. Every number is checked against a naive recomputation: the margins against a fresh
`sdpo curate score --policy M --reference S`, val_loss / learned_share against plain Python.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import shared
from sdpo_kit.cli import app
from sdpo_kit.io import read_parquet_metadata

FAST = ["--folds", "2", "--seeds", "2", "--per_device_train_batch_size", "2", "--num_train_epochs", "1",
        "--learning_rate", "1e-3", "--lr_scheduler_type", "constant", "--save_strategy", "no", "--report_to", "none",
        "--logging_steps", "1", "--seed", "0", "--beta", "0.1"]


def sdpo(*argv) -> str:
    result = CliRunner().invoke(app, [str(a) for a in argv])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_model_dir) -> Path:
    """20 short real pairs, two per prompt, sources a/b, scored by the tiny model (max_length 64)."""
    folder = tmp_path_factory.mktemp("crossfit_data")
    df = pl.read_parquet(shared("alpaca_eval_pairs.parquet")).filter(pl.col("prompt").str.len_chars() < 120).head(20)
    rows = [{"prompt": df["prompt"][i // 2], "chosen": r["chosen"][:160], "rejected": r["rejected"][:160],
             "source": "a" if i % 3 else "b"} for i, r in enumerate(df.iter_rows(named=True))]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sdpo("curate", "score", folder / "pairs.jsonl", "--model", tiny_model_dir, "--max_length", "64",
         "--out", folder / "scored.parquet")
    return folder / "scored.parquet"


@pytest.fixture(scope="module")
def crossfit(scored, tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("crossfit") / "difficulty.parquet"
    sdpo("curate", "crossfit", scored, "--model", tiny_model_dir, "--out", out, "--keep_models", *FAST)
    return out


def records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.with_name(out.name + ".crossfit").glob("*/record.json"))]


def meta(out: Path) -> dict:
    return json.loads(read_parquet_metadata(out)["sdpo_kit.crossfit"])


@pytest.mark.slow
def test_folds_by_prompt_and_every_input_column_kept(crossfit, scored):
    frame, given = pl.read_parquet(crossfit), pl.read_parquet(scored)
    assert frame.select(given.columns).equals(given)  # every input row and column, in order
    prompts = frame["prompt"].list.last().struct.field("content").to_list()
    folds = meta(crossfit)["assignment"]["folds_per_seed"]
    assert sorted(folds) == ["0", "1"]
    for seed_folds in folds.values():
        of_prompt: dict = {}
        for prompt, fold in zip(prompts, seed_folds):
            of_prompt.setdefault(prompt, set()).add(fold)
        assert all(len(f) == 1 for f in of_prompt.values())  # no prompt in two folds
        assert set(seed_folds) == {0, 1}
    assert folds["0"] != folds["1"]  # each seed draws its own folds
    assert frame["n_runs"].to_list() == [2] * frame.height


@pytest.mark.slow
def test_every_pair_scored_only_by_models_that_did_not_train_on_it(crossfit):
    from sdpo_kit.runs import read_run

    recs = records(crossfit)
    assert len(recs) == 4
    ids = pl.read_parquet(crossfit)["pair_id"].to_list()
    for r in recs:
        run_dir = crossfit.with_name(crossfit.name + ".crossfit") / f"seed{r['seed_index']}_fold{r['fold']}" / "run"
        files = read_run(run_dir)["steps"][0]["partition"]
        trained = {p for f in files for p in pl.read_parquet(f)["pair_id"].to_list()}
        assert trained == set(r["trained_pair_ids"]) and not trained & set(r["scored_pair_ids"])
    for seed in (0, 1):  # per seed, every pair held out exactly once
        scored = [p for r in recs if r["seed_index"] == seed for p in r["scored_pair_ids"]]
        assert sorted(scored) == sorted(ids)
    fingerprints = {r["model_fingerprint"] for r in meta(crossfit)["runs"]}
    assert len(fingerprints) == 4 and meta(crossfit)["base_fingerprint"] not in fingerprints


@pytest.mark.slow
def test_margins_are_the_scorers_policy_vs_s(crossfit, scored, tiny_model_dir, tmp_path):
    """Run seed0_fold1's margins equal `sdpo curate score --policy M --reference S` on its held-out pairs."""
    work = crossfit.with_name(crossfit.name + ".crossfit") / "seed0_fold1"
    rec = json.loads((work / "record.json").read_text())
    heldout = pl.read_parquet(scored).filter(pl.col("pair_id").is_in(rec["scored_pair_ids"]))
    heldout.select("prompt", "chosen", "rejected", "source").write_ndjson(tmp_path / "heldout.jsonl")
    sdpo("curate", "score", tmp_path / "heldout.jsonl", "--reference", tiny_model_dir, "--policy",
         work / "run" / "step_1" / "model", "--max_length", "64", "--beta", "0.1", "--out", tmp_path / "fresh.parquet",
         "--no_cache")
    fresh = pl.read_parquet(tmp_path / "fresh.parquet").select("pair_id", "reward_margin")
    ours = pl.read_parquet(crossfit).select("pair_id", pl.col("crossfit_margins").list.get(0).alias("m"))
    both = fresh.join(ours, on="pair_id")
    assert both.height == len(rec["scored_pair_ids"])
    for a, b in both.select("reward_margin", "m").iter_rows():
        assert a == pytest.approx(b, abs=1e-6)


@pytest.mark.slow
def test_val_loss_and_learned_share_equal_a_naive_recomputation(crossfit):
    frame = pl.read_parquet(crossfit)
    for row in frame.iter_rows(named=True):
        margins = row["crossfit_margins"]
        losses = [math.log1p(math.exp(-m)) for m in margins]  # −log σ(m)
        assert row["val_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-12)
        assert row["val_loss_sd"] == pytest.approx(statistics.stdev(losses), abs=1e-12)
        assert row["learned_share"] == sum(m > 0 for m in margins) / len(margins)
    agreement = meta(crossfit)["agreement"]
    from sdpo_kit.stats import spearman

    per_seed = [[math.log1p(math.exp(-m[s])) for m in frame["crossfit_margins"]] for s in (0, 1)]
    assert agreement == [{"seeds": [0, 1], "spearman": pytest.approx(spearman(*per_seed), abs=1e-12)}]


def _cli(*argv) -> list[str]:
    return [sys.executable, "-c", "from sdpo_kit.cli import app; app()", *map(str, argv)]


@pytest.mark.slow
def test_kill_between_runs_then_rerun_gives_an_identical_file(crossfit, scored, tiny_model_dir, tmp_path):
    out = tmp_path / "difficulty.parquet"
    argv = ["curate", "crossfit", scored, "--model", tiny_model_dir, "--out", out, *FAST]
    proc = subprocess.Popen(_cli(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(tmp_path.glob("*.crossfit/*/record.json")) and proc.poll() is None:
        assert time.time() < deadline, "the first run never finished"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(list(tmp_path.glob("*.crossfit/*/record.json"))) < 4, "killed too late"
    said = sdpo(*argv)
    assert "done earlier, kept" in said
    assert out.read_bytes() == crossfit.read_bytes()


@pytest.mark.slow
def test_a_changed_setting_starts_afresh_and_says_why(crossfit, scored, tiny_model_dir, tmp_path):
    out = tmp_path / "difficulty.parquet"
    shutil.copytree(crossfit.with_name(crossfit.name + ".crossfit"), tmp_path / "difficulty.parquet.crossfit")
    flags = [f for f in FAST]
    flags[flags.index("--learning_rate") + 1] = "2e-3"
    said = sdpo("curate", "crossfit", scored, "--model", tiny_model_dir, "--out", out, *flags, "--seeds", "1")
    line = next(x for x in said.splitlines() if "starting afresh" in x)
    assert "4 finished run(s)" in line and "seeds 2 -> 1" in line and "trl.learning_rate 0.001 -> 0.002" in line
    assert len(records(out)) == 2 and meta(out)["settings"]["trl"]["learning_rate"] == 0.002


def test_bad_settings_are_one_line(scored, tmp_path):
    result = CliRunner().invoke(app, ["curate", "crossfit", str(scored), "--out", str(tmp_path / "x.parquet"),
                                      "--folds", "1"])
    assert result.exit_code == 2 and "--folds: must be >= 2" in result.output
    result = CliRunner().invoke(app, ["curate", "crossfit", str(tmp_path / "none.parquet"), "--out",
                                      str(tmp_path / "x.parquet")])
    assert result.exit_code == 1 and "none.parquet" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["curate", "crossfit", str(scored), "--out", str(scored)])
    assert result.exit_code == 2 and "would overwrite the input" in result.output
    result = CliRunner().invoke(app, ["curate", "crossfit", str(scored), "--out", str(tmp_path / "x.parquet"),
                                      "--folds", "11"])
    assert result.exit_code == 1 and "10 distinct prompt(s) cannot fill --folds 11" in result.output


def test_train_cpu_yaml_sets_the_training(monkeypatch):
    from conftest import REPO
    from sdpo_kit.curate.crossfit import parse

    monkeypatch.chdir(REPO)
    (cfg, keys, args), given = parse(["s.parquet", "--config", "configs/train_cpu.yaml", "--out", "d.parquet",
                                      "--learning_rate", "2e-5", "--lora_r", "4"])
    assert (cfg.data, cfg.out, cfg.folds, cfg.seeds, keys.model, keys.lora_r) == ("s.parquet", "d.parquet", 2, 3,
                                                                                  "default", 4)
    assert (args.beta, args.learning_rate, args.per_device_train_batch_size, args.seed) == (0.1, 2e-5, 2, 0)
    assert {"beta", "learning_rate", "lora_r", "out", "data"} <= given


def test_python_api_run_with_defaults(scored, tiny_model_dir, tmp_path):
    """`run(CrossfitConfig(...))` from Python: the DPOConfig is the command's default (as with no TRL flag),
    max_length comes from the input's scorer settings as on the command line."""
    from sdpo_kit.curate.crossfit import CrossfitConfig, _train_keys, run

    out = run(CrossfitConfig(str(scored), str(tmp_path / "d.parquet"), seeds=1), keys=_train_keys()(model=str(tiny_model_dir)))
    frame = pl.read_parquet(out)
    assert frame.height == pl.read_parquet(scored).height and frame["val_loss"].is_not_null().sum() > 0
    assert meta(out)["settings"]["trl"]["max_length"] == 64


def test_difficulty_from_hand_margins_with_missing_runs():
    """A pair the scorer dropped in one run has n_runs 1 (sd null); one dropped everywhere has no loss."""
    from sdpo_kit.curate.folds import difficulty

    runs = [(0, pl.DataFrame({"pair_id": ["a", "b"], "reward_margin": [0.5, -1.0]})),
            (1, pl.DataFrame({"pair_id": ["a"], "reward_margin": [-0.25]}))]
    got = difficulty(["a", "b", "c"], runs, seeds=2).to_dicts()
    la, lb = [math.log1p(math.exp(-m)) for m in (0.5, -0.25)], math.log1p(math.exp(1.0))
    assert got[0]["val_loss"] == pytest.approx(sum(la) / 2, abs=1e-15)
    assert got[0]["val_loss_sd"] == pytest.approx(statistics.stdev(la), abs=1e-15)
    assert (got[0]["learned_share"], got[0]["n_runs"], got[0]["crossfit_margins"]) == (0.5, 2, [0.5, -0.25])
    assert got[1] == {"pair_id": "b", "val_loss": pytest.approx(lb, abs=1e-15), "val_loss_sd": None,
                      "learned_share": 0.0, "n_runs": 1, "crossfit_margins": [-1.0, None]}
    assert got[2] == {"pair_id": "c", "val_loss": None, "val_loss_sd": None, "learned_share": None, "n_runs": 0,
                      "crossfit_margins": [None, None]}
