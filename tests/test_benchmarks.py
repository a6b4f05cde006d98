"""The benchmark scripts still run against the library (issue 21's config-through broke rank_bf16.py
silently): each one's smallest setting on the tiny model, into a temp folder. Nothing here is timed.

    python -m pytest -q tests/test_benchmarks.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_rank_bf16_runs_and_compares_the_two_passes(tiny_model_dir, tmp_path):
    out = tmp_path / "rank"
    env = {**os.environ, "SDPO_KIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "rank_bf16.py"), "--pairs", "6",
                           "--lengths", "64", "--model", str(tiny_model_dir), "--work", str(tmp_path / "work"),
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    (row,) = record["lengths"]
    compare = row["compare"]
    assert row["max_length"] == 64 and 0 < compare["pairs"] <= 6
    assert -1 <= compare["spearman_margin"] <= 1 and 0 <= compare["sign_agreement"] <= 1
    assert row["fp32"]["seconds"] and row["bf16"]["seconds"]  # an empty cache: both passes timed
    assert "| 64 |" in out.with_suffix(".md").read_text()


@pytest.mark.slow
def test_train_benchmark_runs_sdpo_and_trl(tiny_model_dir, tmp_path):
    out = tmp_path / "train"
    env = {**os.environ, "SDPO_KIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train.py"), "--pairs", "4", "--max-length", "64",
                           "--batch", "2", "--model", str(tiny_model_dir), "--configs", "sdpo-fp32,sdpo-bf16,trl-fp32",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.with_suffix(".json").read_text())
    assert [r["config"] for r in record["results"]] == ["sdpo-fp32", "sdpo-bf16", "trl-fp32"]
    for r in record["results"]:
        assert r["steps"] == 2 and r["real_tokens"] > 0 and abs(r["loss_first"] - 0.693147) < 1e-3, r
    table = out.with_suffix(".md").read_text()
    assert all(f"| {name} |" in table for name in ("sdpo-fp32", "sdpo-bf16", "trl-fp32"))


def test_attention_benchmark_runs_its_three_variants():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "attention.py"), "--rows", "1", "--length", "16",
                           "--repeats", "1"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["fp32", "bf16 (torch under autocast)", "cpu_sdpa under autocast"]
    errors = [float(line.rsplit(" ", 1)[1]) for line in lines]
    assert errors[0] < 1e-5 and errors[2] < 2e-2  # fp32 inside, one bf16 rounding of the output
