"""Issue 22, numbers that cannot train the wrong way: settings refused in one line before anything is
written (the parser's generic checks and train's DPO checks), DPOConfig options that need the network.

    python -m pytest -q tests/test_numbers.py

Every command runs through the CLI in-process on the tiny model; a refusal is one `error:` line
naming the flag, and the run folder holds no run.json afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from test_hardening_run import one_line_error, sdpo
from test_train import FAST, write_partitions


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    return write_partitions(tmp_path_factory.mktemp("parts"), steps=2, pairs=4)


# (flags, what the one error line must name): each would have trained the wrong way, or crashed mid-run.
TRAIN_REFUSED = [
    (["--beta", "-0.5"], ["--beta", "> 0"]),
    (["--beta", "0"], ["--beta", "> 0"]),
    (["--label_smoothing", "0.5"], ["--label_smoothing", "[0, 0.5)"]),
    (["--label_smoothing", "2.0"], ["--label_smoothing"]),
    (["--learning_rate", "nan"], ["--learning_rate", "finite"]),
    (["--learning_rate=-1e-5"], ["--learning_rate", "> 0"]),
    (["--learning_rate", "inf"], ["--learning_rate", "finite"]),
    (["--num_train_epochs", "0"], ["--num_train_epochs", "> 0"]),
    (["--max_steps", "0"], ["--max_steps", ">= 1"]),
    (["--seed", "-1"], ["--seed", "[0, 4294967295]"]),
    (["--seed", str(2**32)], ["--seed", "[0, 4294967295]"]),
    (["--data_seed", "-7"], ["--data_seed", "[0, 4294967295]"]),
    (["--max_grad_norm", "nan"], ["--max_grad_norm", "finite"]),
    (["--per_device_train_batch_size", "0"], ["--per_device_train_batch_size", ">= 1"]),
    (["--report_to", "wandb"], ["--report_to", "wandb", "network"]),
    (["--push_to_hub"], ["--push_to_hub", "network"]),
    (["--hub_model_id", "me/model"], ["--hub_model_id", "--push_to_hub"]),
    (["--sync_ref_model"], ["--sync_ref_model"]),
    (["--loss_type", "aot", "--use_weighting"], ["--use_weighting", "aot"]),
    (["--loss_type", "exo_pair"], ["--label_smoothing", "exo_pair"]),
    (["--loss_type", "bco_pair", "--f_divergence_type", "js_divergence"], ["--f_divergence_type", "bco_pair"]),
    (["--eval_strategy", "steps"], ["--eval_strategy", "sdpo eval"]),
    (["--ld_alpha", "1.5"], ["--ld_alpha", "[0, 1]"]),
    (["--adam_beta2", "1e30"], ["--adam_beta2", "[0, 1)"]),  # torch's AdamW refused it only at trainer build
    (["--weight_decay=-1"], ["--weight_decay", ">= 0"]),
]


@pytest.mark.parametrize("flags,needles", TRAIN_REFUSED, ids=lambda x: " ".join(x) if isinstance(x, list) else "")
def test_train_refuses_settings_before_run_json(tmp_path, tiny_model_dir, parts, flags, needles):
    out = tmp_path / "run"
    code, text = sdpo("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *FAST, *flags)
    one_line_error(code, text, 2, *needles)
    assert not (out / "run.json").exists() and not (out / "config.yaml").exists()


@pytest.mark.parametrize("yaml_text,needles", [
    ("max_steps: .inf\n", ["max_steps", "expected int", "inf"]),
    ("num_train_epochs: .nan\n", ["num_train_epochs", "finite"]),
    ("seed: .nan\n", ["seed", "expected int"]),
    ("beta: -.inf\n", ["beta", "finite"]),
    ("seed: -4\n", ["seed", "[0, 4294967295]"]),
])
def test_train_yaml_non_finite_and_bad_seed_name_the_file_and_key(tmp_path, tiny_model_dir, parts, yaml_text, needles):
    config = tmp_path / "train.yaml"
    config.write_text(yaml_text)
    code, text = sdpo("train", "--partitions", parts, "--model", tiny_model_dir, "--out", tmp_path / "run",
                      "--config", config)
    one_line_error(code, text, 2, str(config), *needles)


def test_a_step_without_optimiser_step_is_refused_before_run_json(tmp_path, tiny_model_dir):
    parts = write_partitions(tmp_path / "parts", steps=2, pairs=2)
    pl.read_parquet(parts / "step_2.parquet").head(1).write_parquet(parts / "step_2.parquet")
    out = tmp_path / "run"
    code, text = sdpo("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *FAST,
                      "--dataloader_drop_last")  # 1 pair, batch 2, drop_last: no batch at all
    one_line_error(code, text, 1, "step 2", "1 pairs", "no optimiser step")
    assert not (out / "run.json").exists()


def _pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"question {i}?", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("words,flags,needles", [
    (["data", "split"], ["--seed", "-1"], ["--seed", "[0, 4294967295]"]),
    (["data", "split"], ["--seed", str(2**40)], ["--seed"]),
    (["data", "split"], ["--heldout", "nan"], ["--heldout", "finite"]),
    (["curate", "split"], ["--fractions", "nan", "nan"], ["--fractions", "finite"]),
    (["curate", "split"], ["--seed", str(2**32)], ["--seed"]),
    (["curate", "split"], ["--min_margin=-inf"], ["--min_margin", "finite"]),
    (["data", "card"], ["--seed", "-2"], ["--seed"]),
])
def test_other_commands_refuse_non_finite_and_bad_seeds(tmp_path, words, flags, needles):
    data = _pairs_file(tmp_path)
    out = tmp_path / "out"
    code, text = sdpo(*words, data, "--out", out, *flags)
    one_line_error(code, text, 2, *needles)
    assert not out.exists()


def test_eval_sample_seed_and_yaml_inf_for_an_int_key(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code, text = sdpo("eval", "--run", run, "--data", _pairs_file(tmp_path), "--generate", "2", "--sample_seed", "-1")
    one_line_error(code, text, 2, "--sample_seed", "[0, 4294967295]")
    config = tmp_path / "split.yaml"
    config.write_text("seed: .inf\n")
    code, text = sdpo("data", "split", _pairs_file(tmp_path), "--out", tmp_path / "o", "--config", config)
    one_line_error(code, text, 2, str(config), "seed: expected int, got inf")


def test_crossfit_takes_trains_checks_and_its_seed_range(tmp_path):
    scored = tmp_path / "missing.parquet"  # the settings are refused before the input is read
    code, text = sdpo("curate", "crossfit", scored, "--out", tmp_path / "d.parquet", "--beta=-1")
    one_line_error(code, text, 2, "--beta", "> 0")
    code, text = sdpo("curate", "crossfit", scored, "--out", tmp_path / "d.parquet", "--seed", str(2**32 - 2),
                      "--seeds", "3")
    one_line_error(code, text, 2, "--seed", "--seeds 3")


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory, tiny_model_dir, parts) -> tuple[Path, str]:
    """A 2-step run with learning rate 1e30: step 1 diverges (its first update overflows the weights)."""
    out = tmp_path_factory.mktemp("diverged") / "run"
    code, text = sdpo("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *FAST,
                      "--learning_rate", "1e30", "--max_grad_norm", "0")
    return out, one_line_error(code, text, 1, "step 1 diverged", "lower the learning rate", "1e+30")


def test_a_diverged_step_stops_the_run_in_one_line_and_run_json_says_so(diverged_run):
    out, line = diverged_run
    print(f"\n$ sdpo train ... --learning_rate 1e30\n{line}")
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "diverged"
    step1, step2 = run["steps"]
    assert step1["status"] == "diverged" and step1["diverged"]["step"] == 1
    assert step1["diverged"]["value"] in ("nan", "inf", "-inf") and step1["diverged"]["where"] in line
    assert step2["status"] == "pending"
    assert not (out / "step_1" / "model").exists() and not (out / "step_2").exists()  # no broken M_1 saved


def test_eval_and_report_call_a_diverged_run_broken(diverged_run, tmp_path, tiny_model_dir, parts):
    run, _ = diverged_run
    heldout = write_partitions(tmp_path / "heldout", steps=1, pairs=4, offset=40) / "step_1.parquet"
    code, text = sdpo("eval", "--run", run, "--data", heldout)
    assert code == 0, text
    print(f"\n$ sdpo eval --run <diverged run> ...\n{text}")
    assert "M1: BROKEN: diverged in training" in text
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert [m["name"] for m in ev["models"]] == ["S"] and ev["broken"][0]["name"] == "M1"
    good = tmp_path / "dpo"
    code, text = sdpo("train", "--partitions", parts, "--model", tiny_model_dir, "--out", good, *FAST, "--mode", "dpo")
    assert code == 0, text
    assert sdpo("eval", "--run", good, "--data", heldout)[0] == 0
    code, text = sdpo("report", run, good, "--out", tmp_path / "report")
    assert code == 0, text
    summary = (tmp_path / "report" / "summary.md").read_text()
    print(summary[:1500])
    assert f"{run.name} is broken: step 1 diverged in training" in summary
    assert " vs " not in summary.split("## Verdict")[1].split("⚠")[0]  # no verdict drawn from the broken run
    assert "| run | run | stepwise | 0 | 4 | M1 (broken) | – |" in summary  # not S's numbers as the run's result


def test_margin_stats_never_counts_a_non_finite_margin_as_correct():
    from sdpo_kit.report.evaluate import _stats
    from sdpo_kit.stats import margin_stats

    df = pl.DataFrame({"m": [float("nan"), 1.0, -1.0, float("inf"), None, 2.0]})
    got = df.select(margin_stats("m")).row(0, named=True)
    finite_positive = [v for v in df["m"].to_list() if v is not None and v == v and abs(v) != float("inf") and v > 0]
    assert got["reward_accuracy"] == len(finite_positive) / 5  # nulls aside, NaN and inf count as wrong
    assert got["mean_margin"] != got["mean_margin"]  # NaN: the mean does not hide it
    stats = _stats(pl.Series([float("nan")] * 4))
    assert stats["accuracy"] == 0.0 and stats["broken"] is True and stats["non_finite"] == 4


def test_a_source_with_non_finite_margins_is_never_sorted_as_easiest():
    from sdpo_kit.curate.strategies import source_order

    nan = float("nan")
    df = pl.DataFrame({"source": ["bad", "bad", "good", "good", "tie", "tie"],
                       "margin": [nan, nan, 0.5, 0.6, 0.1, -0.2]})
    order = source_order(df)
    assert order["source"].to_list() == ["good", "tie", "bad"], order  # NaN > 0 was "correct": bad came first
    assert order.filter(pl.col("source") == "bad")["reward_accuracy"].item() == 0.0
    tied = pl.DataFrame({"source": ["a", "a", "b"], "margin": [nan, -1.0, -0.5]})  # accuracy 0 both: a's mean NaN
    assert source_order(tied)["source"].to_list() == ["b", "a"]  # polars sorts NaN above every number


# ---------------------------------------------------------------- ld_alpha: the reference summed as TRL sums it


def test_ld_weighted_sums_against_naive_per_token_sums(tiny_model_dir):
    from test_length import length_pairs, naive_token_logps
    from test_score import close

    from sdpo_kit.models import load_model
    from sdpo_kit.scoring.frame import ScoreConfig, ld_weighted, score_frame
    from sdpo_kit.scoring.tokens import tokenize_pair, truncate

    model, tokenizer = load_model(tiny_model_dir)
    scored, _ = score_frame(length_pairs(), model, tokenizer, ScoreConfig(max_length=64, token_budget=90,
                                                                          share_prefix=2), progress=False)
    for alpha in (0.0, 0.5, 1.0):
        weighted = ld_weighted(scored, alpha)
        for row, plain in zip(weighted.iter_rows(named=True), scored.iter_rows(named=True)):
            p, c, r = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
            lc = naive_token_logps(model, truncate(p, c, 64, "keep_start").ids, len(p))
            lr = naive_token_logps(model, truncate(p, r, 64, "keep_start").ids, len(p))
            k = min(len(lc), len(lr))  # TRL: shared = first min(n_w, n_l) completion tokens, tail times alpha
            assert close(row["ref_chosen_logps"], sum(lc[:k]) + alpha * sum(lc[k:])), (alpha, row["ref_chosen_logps"])
            assert close(row["ref_rejected_logps"], sum(lr[:k]) + alpha * sum(lr[k:]))
            assert row["margin"] == plain["margin"]  # γ stays the plain summed margin
    assert ld_weighted(scored, None) is scored


@pytest.mark.slow
def test_train_ld_alpha_starts_every_step_at_ln2(tmp_path, tiny_model_dir):
    """`sdpo train --ld_alpha 0.5`, 2 steps: at each step's first optimiser step the policy is its
    reference, so TRL's LD-weighted rewards are 0 and the loss ln 2 (plain sums gave 6.96 here)."""
    from test_train import assert_exact_first_log

    parts = write_partitions(tmp_path / "parts", steps=2, pairs=4)
    out = tmp_path / "run"
    code, text = sdpo("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *FAST,
                      "--ld_alpha", "0.5", "--max_length", "1024")  # untruncated: answers of different lengths
    assert code == 0, text
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["settings"]["trl"]["ld_alpha"] == 0.5
    for t in (1, 2):
        assert_exact_first_log(out / f"step_{t}")
        ref = pl.read_parquet(out / f"step_{t}" / "reference.parquet")
        tail = (ref["ref_chosen_logps"] - ref["ref_chosen_logps_shared"]).abs() + (
            ref["ref_rejected_logps"] - ref["ref_rejected_logps_shared"]).abs()
        assert (tail > 1.0).all()  # every pair has a tail that alpha weighs (plain sums would start far from ln 2)


def test_spearman_interval_resamples_whole_clusters():
    """The seed-agreement interval: ρ is `spearman`'s; 200 pairs copied 10x from 20 prompts are 20
    independent draws, so resampling prompts gives a much wider interval than resampling rows."""
    import numpy as np

    from sdpo_kit.stats import spearman, spearman_interval

    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    r = spearman_interval(x, y, draws=500)
    assert r["rho"] == spearman(x, y) and r["lo"] < r["rho"] < r["hi"] and r["clusters"] == 200
    xs, ys, prompts = np.repeat(x[:20], 10), np.repeat(y[:20], 10), np.repeat(np.arange(20), 10)
    by_prompt, by_row = spearman_interval(xs, ys, prompts, draws=500), spearman_interval(xs, ys, draws=500)
    assert by_prompt["clusters"] == 20
    assert by_prompt["hi"] - by_prompt["lo"] > 1.5 * (by_row["hi"] - by_row["lo"])
    assert spearman_interval([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None
