"""Issue 11, train/eval/report side: nothing silently wrong.

    python -m pytest -q tests/test_hardening_run.py

- `train --resume` restores the run's own settings and refuses changed ones, naming each;
- run.json records S as an absolute path + fingerprint, the partitions + their sha256, and
  every resolved setting; eval/report check every model they load against that record;
- end-of-step figures are over the whole partition (checked against a plain torch forward);
- bad input to train/eval/report is one line, exit 1 (input) or 2 (usage), no traceback;
- the report escapes data and paths, and is written atomically as a folder.

Every command runs through the CLI in-process (typer's CliRunner) on the tiny model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import build_tiny_model
from sdpo_kit.cli import app
from test_train import FAST, _cli, write_partitions

# Fewer optimiser steps per step (4 pairs / batch 2 = 2) than TRL's logging_steps (10).
QUIET = [a for a in FAST if a not in ("--logging_steps", "1")]


def sdpo(*argv) -> tuple[int, str]:
    """Exit code and everything the command printed (stdout + stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in argv])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def ok(*argv) -> str:
    code, out = sdpo(*argv)
    assert code == 0, out
    return out


def one_line_error(code: int, out: str, expected_code: int, *needles: str) -> str:
    """The answer to bad input: the expected exit code, one `error:` line, no traceback."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert code == expected_code, out
    assert len(errors) == 1 and "Traceback" not in out, out
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


# ---------------------------------------------------------------- resume restores, or refuses


@pytest.mark.slow
def test_resume_alone_restores_the_runs_settings_bit_identical(tmp_path, tiny_model_dir):
    """Killed in step 2, resumed with only --partitions/--out/--resume: same weights as uninterrupted.

    The run uses non-default settings (batch 1, 1 epoch, max_length 64, lr 1e-3, ...): with TRL's
    defaults (batch 8, 3 epochs, max_length 1024) step 2 would take 3 optimiser steps, not 8.
    """
    parts = write_partitions(tmp_path / "parts", steps=2, pairs=8)
    flags = [*FAST, "--per_device_train_batch_size", "1", "--save_strategy", "steps", "--save_steps", "1"]
    clean = tmp_path / "clean"
    ok("train", "--partitions", parts, "--model", tiny_model_dir, "--out", clean, *flags)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli("--partitions", parts, "--model", tiny_model_dir, "--out", killed, *flags),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not list((killed / "step_2" / "checkpoints").glob("checkpoint-[3-9]*")) and proc.poll() is None:
        assert time.time() < deadline, "the run never reached step 2's third checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert run_json(killed)["steps"][1]["status"] != "done", "killed too late"

    out = ok("train", "--partitions", parts, "--out", killed, "--resume")  # no --model, no settings
    assert "resuming from" in out
    a, b = run_json(clean), run_json(killed)
    assert b["steps"][1]["resumed_from"].startswith("checkpoint-")
    assert [s["model_fingerprint"] for s in a["steps"]] == [s["model_fingerprint"] for s in b["steps"]]
    assert b["settings"] == a["settings"] and b["settings"]["trl"]["per_device_train_batch_size"] == 1
    state = json.loads((killed / "step_2" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["train_batch_size"] == 1  # 8 pairs, batch 1, 1 epoch
    print(f"\nresume bit-identity: clean M2 {a['steps'][1]['model_fingerprint']} == "
          f"resumed M2 {b['steps'][1]['model_fingerprint']} (resumed from {b['steps'][1]['resumed_from']})")


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """A finished 1-step run (4 pairs) with max_length 64 and beta 0.1."""
    root = tmp_path_factory.mktemp("done")
    parts = write_partitions(root / "parts", steps=1, pairs=4)
    out = root / "run"
    ok("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *FAST)
    return parts, out


def test_run_json_records_what_the_run_used(done_run, tiny_model_dir):
    from sdpo_kit.models import load_model, model_fingerprint
    from sdpo_kit.train import partitions_digest

    parts, out = done_run
    run = run_json(out)
    assert run["base_model"] == str(Path(tiny_model_dir).resolve()) and Path(run["base_model"]).is_absolute()
    assert run["base_fingerprint"] == model_fingerprint(load_model(tiny_model_dir)[0])
    assert run["partitions"] == str(parts.resolve())
    import hashlib

    assert run["partitions_sha256"]["manifest_sha256"] == hashlib.sha256((parts / "manifest.json").read_bytes()).hexdigest()
    assert run["partitions_sha256"] == partitions_digest(parts, [parts / "step_1.parquet"])
    trl = run["settings"]["trl"]
    # Flags and defaults alike: the run can be rebuilt from its record.
    assert trl["max_length"] == 64 and trl["beta"] == 0.1 and trl["per_device_train_batch_size"] == 2
    assert trl["gradient_accumulation_steps"] == 1 and trl["truncation_mode"] == "keep_start"
    assert run["settings"]["sdpo"] == {"mode": "stepwise", "order": "shuffled", "lora_r": 0, "lora_alpha": 16,
                                       "lora_dropout": 0.0, "lora_target_modules": "all-linear"}


def test_resume_refuses_changed_settings_naming_each(done_run, tmp_path, tiny_model_dir, smollm_tokenizer):
    parts, out = done_run
    before = (out / "run.json").read_text()
    other_parts = write_partitions(tmp_path / "other", steps=1, pairs=4, offset=8)
    other_model = build_tiny_model(tmp_path / "other_model", smollm_tokenizer, seed=1)
    cases = [
        (["--partitions", parts, "--max_length", "128"], ["max_length 64 -> 128"]),
        (["--partitions", other_parts], ["partitions", str(other_parts.resolve())]),
        (["--partitions", parts, "--model", other_model], ["model", str(other_model.resolve())]),
        (["--partitions", parts, "--per_device_train_batch_size", "8", "--lora_r", "4"],
         ["per_device_train_batch_size 2 -> 8", "lora_r 0 -> 4"]),
        (["--partitions", parts, "--learning_rate", "5e-6"], ["learning_rate 0.001 -> 5e-06", "new --out"]),
    ]
    for flags, needles in cases:
        code, text = sdpo("train", *flags, "--out", out, "--resume")
        print("\n" + one_line_error(code, text, 2, "other settings", *needles))
    # The same value given again is not a change.
    ok("train", "--partitions", parts, "--out", out, "--resume", "--max_length", "64", "--model", tiny_model_dir)
    assert json.loads((out / "run.json").read_text())["settings"] == json.loads(before)["settings"]


def test_resume_refuses_partitions_changed_in_place(tmp_path, tiny_model_dir):
    parts = write_partitions(tmp_path / "parts", steps=1, pairs=4)
    out = tmp_path / "run"
    ok("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *FAST)
    write_partitions(tmp_path / "parts", steps=1, pairs=4, offset=4)  # same folder, other pairs
    code, text = sdpo("train", "--partitions", parts, "--out", out, "--resume")
    print("\n" + one_line_error(code, text, 2, "changed since the run started"))


# ---------------------------------------------------------------- end-of-step figures


def _naive_logps(model, tokenizer, prompt, completion, max_length: int) -> float:
    """Sum of log p(completion token) by a plain forward: chat template, keep_start truncation."""
    import torch

    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    assert list(full[:len(prompt_ids)]) == list(prompt_ids) and len(prompt_ids) < max_length
    ids = list(full)[:max_length]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(prompt_ids), len(ids)))


@pytest.mark.slow
def test_end_of_step_figures_are_over_the_whole_partition(tmp_path, tiny_model_dir):
    from sdpo_kit.models import load_model

    parts = write_partitions(tmp_path / "parts", steps=3, pairs=4)
    out = tmp_path / "run"
    ok("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *QUIET)  # logging_steps 10
    previous = tiny_model_dir
    for t in (1, 2, 3):
        summary = json.loads((out / f"step_{t}" / "summary.json").read_text())
        assert summary["optimizer_steps"] == 2 and summary["end_over"] == "partition"
        policy, tok = load_model(out / f"step_{t}" / "model")
        ref, _ = load_model(previous)
        margins = []
        for r in pl.read_parquet(parts / f"step_{t}.parquet").iter_rows(named=True):
            pw, pl_ = (_naive_logps(policy, tok, r["prompt"], r[k], 64) for k in ("chosen", "rejected"))
            rw, rl = (_naive_logps(ref, tok, r["prompt"], r[k], 64) for k in ("chosen", "rejected"))
            margins.append(0.1 * ((pw - rw) - (pl_ - rl)))
        loss = sum(math.log1p(math.exp(-m)) for m in margins) / len(margins)  # −log σ(m)
        assert summary["loss_first"] == pytest.approx(math.log(2), abs=1e-4)
        assert summary["loss_end"] != pytest.approx(summary["loss_first"], abs=1e-4)
        assert summary["loss_end"] == pytest.approx(loss, abs=1e-5)
        assert summary["reward_margin_end"] == pytest.approx(sum(margins) / len(margins), abs=1e-5)
        assert summary["reward_accuracy_end"] == sum(m > 0 for m in margins) / len(margins)
        print(f"\nstep {t}: loss_first {summary['loss_first']:.6f}  loss_end {summary['loss_end']:.6f} "
              f"(naive {loss:.6f})  reward_margin_end {summary['reward_margin_end']:+.6f}  "
              f"TRL train_loss {summary['train_loss']:.6f}")
        previous = out / f"step_{t}" / "model"
    # The report plots these values.
    ok("report", out, "--out", tmp_path / "report")
    figures = json.loads((tmp_path / "report" / "figures.json").read_text())
    bars = figures["run_reward_margin"]["axes"][1]["bars"][0]["values"]
    ends = [json.loads((out / f"step_{t}" / "summary.json").read_text())["reward_margin_end"] for t in (1, 2, 3)]
    assert bars == pytest.approx(ends)
