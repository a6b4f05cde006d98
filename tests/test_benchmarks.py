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
