"""`sdpo train --reference-schedule stepwise|fixed|mix` on a tiny 3-step run, checked against each definition.

    python -m pytest -q tests/test_reference_schedule.py

stepwise: ref_t = M_{t-1}; fixed: ref_t = S; mix: ref_1 = S, ref_t = α·M_{t-1} + (1−α)·ref_{t-1},
checked tensor by tensor against an average computed here from the saved weights.
"""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from sdpo_kit.cli import app
from test_train import FAST, assert_exact_first_log, load_weights, write_partitions


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return write_partitions(tmp_path_factory.mktemp("parts_sched"), steps=3, pairs=4)


def train(parts, model, out, *extra) -> dict:
    result = CliRunner().invoke(app, ["train", "--partitions", str(parts), "--model", str(model), "--out", str(out),
                                      *FAST, *map(str, extra)])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads((out / "run.json").read_text())


def summary(out, t: int) -> dict:
    return json.loads((out / f"step_{t}" / "summary.json").read_text())


def fingerprint(path) -> str:
    from sdpo_kit.models import load_model, model_fingerprint

    return model_fingerprint(load_model(path)[0])


def direct_scores(model_dir, partition) -> pl.DataFrame:
    """The partition scored here by the model folder, no cache: the independent oracle."""
    from sdpo_kit.models import load_model
    from sdpo_kit.scoring.frame import ScoreConfig, score_frame

    model, tok = load_model(model_dir)
    scored, _ = score_frame(pl.read_parquet(partition), model, tok, ScoreConfig(max_length=64), progress=False)
    return scored


def assert_reference_is(out, t: int, model_dir, partition) -> None:
    ref = pl.read_parquet(out / f"step_{t}" / "reference.parquet").sort("pair_id")
    want = direct_scores(model_dir, partition).sort("pair_id")
    for c in ("ref_chosen_logps", "ref_rejected_logps"):
        assert ref[c].to_list() == pytest.approx(want[c].to_list(), abs=1e-4)


@pytest.mark.slow
def test_stepwise_reference_is_previous_model(tmp_path, parts, tiny_model_dir):
    out = tmp_path / "run"
    run = train(parts, tiny_model_dir, out)  # default schedule
    assert run["reference_schedule"] == "stepwise" and run["settings"]["sdpo"]["reference_schedule"] == "stepwise"
    previous = fingerprint(tiny_model_dir)
    for t, rec in enumerate(run["steps"], 1):
        assert rec["reference_fingerprint"] == rec["start_fingerprint"] == previous
        assert summary(out, t)["reference_fingerprint"] == previous
        assert summary(out, t)["reference_schedule"] == "stepwise"
        want = ("S", "S") if t == 1 else ("M_{t-1}", f"M{t - 1}")
        assert (rec["reference"]["kind"], rec["reference"]["model"], rec["reference"]["fingerprint"]) == (*want, previous)
        assert_exact_first_log(out / f"step_{t}")
        previous = fingerprint(out / f"step_{t}" / "model")


@pytest.mark.slow
def test_fixed_reference_is_S_start_is_previous(tmp_path, parts, tiny_model_dir):
    out = tmp_path / "run"
    run = train(parts, tiny_model_dir, out, "--reference-schedule", "fixed")
    base = fingerprint(tiny_model_dir)
    assert run["reference_schedule"] == "fixed" and run["base_fingerprint"] == base
    for t, rec in enumerate(run["steps"], 1):
        start = base if t == 1 else fingerprint(out / f"step_{t - 1}" / "model")
        assert rec["reference_fingerprint"] == base and rec["start_fingerprint"] == start
        assert rec["reference"] == {"kind": "S", "model": "S", "path": str(tiny_model_dir), "fingerprint": base}
        s = summary(out, t)
        assert s["reference_fingerprint"] == base and s["reference_schedule"] == "fixed" and s["reference_exact"]
        # The log-probs TRL trained against are S's own on this step's pairs.
        assert_reference_is(out, t, tiny_model_dir, parts / f"step_{t}.parquet")
        if t == 1:
            assert_exact_first_log(out / "step_1")
        else:  # reference S != start M_{t-1}: the first loss is no longer ln 2, the check is the re-score
            assert s["reference_check"]["kind"] == "rescored" and s["reference_check"]["max_abs_diff"] <= 1e-4
            assert abs(s["loss_first"] - math.log(2)) > 1e-4
    assert not (out / "step_2" / "reference_model").exists()  # S is scored, never copied
    rep = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert f"| 2 | fixed | S | {base} | True | re-scored 4 pairs" in md  # the reference as run.json records it


@pytest.mark.slow
def test_mix_reference_is_hand_computed_average(tmp_path, parts, tiny_model_dir):
    alpha = 0.3
    out = tmp_path / "run"
    run = train(parts, tiny_model_dir, out, "--reference-schedule", "mix", "--ref-mix-alpha", alpha)
    assert run["reference_schedule"] == "mix" and run["ref_mix_alpha"] == alpha
    assert run["steps"][0]["reference_fingerprint"] == fingerprint(tiny_model_dir)  # ref_1 = S
    previous_ref = load_weights(tiny_model_dir)
    for t in (2, 3):
        folder = out / f"step_{t}" / "reference_model"
        m_prev, got = load_weights(out / f"step_{t - 1}" / "model"), load_weights(folder)
        assert set(got) == set(m_prev)
        for name, tensor in got.items():  # α·M_{t-1} + (1−α)·ref_{t-1}, tensor by tensor
            want = alpha * m_prev[name] + (1 - alpha) * previous_ref[name]
            assert torch.allclose(tensor, want, rtol=0, atol=1e-7), name
        rec = run["steps"][t - 1]
        assert rec["reference_fingerprint"] == fingerprint(folder) == summary(out, t)["reference_fingerprint"]
        assert rec["reference_fingerprint"] not in (rec["start_fingerprint"], run["base_fingerprint"])
        assert summary(out, t)["reference_exact"] and summary(out, t)["reference_model"] == str(folder)
        assert rec["reference"] == {"kind": "mix", "model": None, "path": str(folder),
                                    "fingerprint": rec["reference_fingerprint"]}
        assert_reference_is(out, t, folder, parts / f"step_{t}.parquet")
        previous_ref = got


def test_bad_schedule_and_alpha_are_one_line_usage_errors(tmp_path, parts):
    for flags, words in ((["--reference-schedule", "soft"], "--reference_schedule must be one of"),
                         (["--ref-mix-alpha", "1.5"], "--ref_mix_alpha must be in [0, 1]")):
        result = CliRunner().invoke(app, ["train", "--partitions", str(parts), "--out", str(tmp_path / "r"), *flags])
        assert result.exit_code == 2 and words in result.output, result.output


@pytest.mark.slow
def test_resume_refuses_another_schedule_and_dpo_ignores_it(tmp_path, parts, tiny_model_dir):
    out = tmp_path / "run"
    train(parts, tiny_model_dir, out, "--reference-schedule", "fixed")
    refused = CliRunner().invoke(app, ["train", "--partitions", str(parts), "--out", str(out), "--resume",
                                       "--reference-schedule", "mix"])
    assert refused.exit_code == 2 and "reference_schedule 'fixed' -> 'mix'" in refused.output, refused.output
    # A bare resume restores the schedule (every step done: nothing retrained).
    again = CliRunner().invoke(app, ["train", "--partitions", str(parts), "--out", str(out), "--resume"])
    assert again.exit_code == 0 and "already done" in again.output, again.output
    dpo = tmp_path / "dpo"
    result = CliRunner().invoke(app, ["train", "--partitions", str(parts), "--model", str(tiny_model_dir), "--out",
                                      str(dpo), "--mode", "dpo", "--reference-schedule", "fixed", *FAST])
    assert result.exit_code == 0 and "--reference_schedule/--ref_mix_alpha are ignored" in result.output
    assert json.loads((dpo / "run.json").read_text())["reference_schedule"] is None


def test_old_runs_without_the_record_are_derived_once_in_runs_py():
    """run.json before the per-step "reference" record: each schedule's definition, in sdpo_kit.runs only."""
    from sdpo_kit.runs import reference_record, run_schedule, step_references

    def old(schedule, mode="stepwise", steps=3):
        return {"mode": mode, "base_model": "/m/S", "reference_schedule": schedule,
                "steps": [{"step": t, "dir": f"step_{t}", "reference_fingerprint": f"fp{t}"} for t in range(1, steps + 1)]}

    got = {sched: [(r["step"], r["kind"], r["model"]) for r in step_references(old(sched))]
           for sched in ("stepwise", "fixed", "mix")}
    assert got == {"stepwise": [(1, "S", "S"), (2, "M_{t-1}", "M1"), (3, "M_{t-1}", "M2")],
                   "fixed": [(1, "S", "S"), (2, "S", "S"), (3, "S", "S")],
                   "mix": [(1, "S", "S"), (2, "mix", None), (3, "mix", None)]}
    assert step_references(old("fixed"))[1]["path"] == "/m/S" and step_references(old("fixed"))[2]["fingerprint"] == "fp3"
    dpo = old(None, mode="dpo", steps=1)
    assert run_schedule(dpo) == "stepwise" and [r["model"] for r in step_references(dpo)] == ["S"]
    # A recorded reference wins over anything the schedule would say.
    run = old("stepwise")
    run["steps"][1]["reference"] = reference_record(2, "S", "/m/S", "fpS")
    assert [r["model"] for r in step_references(run)] == ["S", "S", "M2"]
    with pytest.raises(ValueError, match="not one of"):
        reference_record(2, "M_t", "/x", None)
