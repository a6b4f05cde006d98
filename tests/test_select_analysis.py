"""analysis/reproduce_select.py (issue 20's selection experiment) end to end on the tiny model.

    python -m pytest -q tests/test_select_analysis.py
"""

from __future__ import annotations

import json
import sys

import polars as pl
import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def select():
    sys.path.insert(0, str(REPO / "analysis"))  # as `python analysis/reproduce_select.py` has it
    import reproduce_select

    return reproduce_select


@pytest.mark.slow
def test_smoke_selection_end_to_end_then_resumes_and_rewrites(select, tiny_model_dir, tmp_path):
    root, results = tmp_path / "root", tmp_path / "results"
    argv = ["--budget", "smoke", "--model", str(tiny_model_dir), "--root", str(root), "--results", str(results),
            "--arms", "dpo_random_q,dpo_easiest_q_val_loss"]
    assert select.main(argv) == 0
    difficulty = pl.read_parquet(root / "data" / "train_selection.parquet")
    train = pl.read_parquet(root / "data" / "train_scored.parquet")
    assert difficulty.height == train.height and {"val_loss", "learned_share", "random_0"} <= set(difficulty.columns)
    kept = {}
    for label in ("dpo-random-q", "dpo-easiest-q-val_loss"):
        part = pl.read_parquet(root / "partitions" / f"{label}-seed0" / "step_1.parquet")
        assert part.height == round(0.7 * difficulty.filter(pl.col("val_loss").is_not_null()).height)
        kept[label] = set(part["pair_id"])
        run = json.loads((root / "runs" / f"{label}-seed0" / "run.json").read_text())
        assert run["status"] == "done" and run["mode"] == "dpo"
        assert "behaviour" in json.loads((root / "runs" / f"{label}-seed0" / "eval" / "eval.json").read_text())
    easiest = difficulty.sort("val_loss").head(len(kept["dpo-easiest-q-val_loss"]))
    assert kept["dpo-easiest-q-val_loss"] == set(easiest["pair_id"])  # the lowest cross-fitted loss
    table = (results / "table.md").read_text()
    assert "| dpo-easiest-q-val_loss − dpo-random-q | 1 vs 1 |" in table  # question 1, with its interval
    assert "Spearman ρ of val_loss between seeds" in table and "Pairs kept per source" in table

    mtime = (root / "runs" / "dpo-random-q-seed0" / "step_1" / "model" / "model.safetensors").stat().st_mtime
    assert select.main(argv) == 0  # a rerun trains nothing again
    assert (root / "runs" / "dpo-random-q-seed0" / "step_1" / "model" / "model.safetensors").stat().st_mtime == mtime
    (results / "table.md").unlink()
    assert select.main([*argv, "--results-only"]) == 0
    assert (results / "table.md").read_text() == table


def test_arms_are_named_by_yaml_stem_or_by_run_label(select):
    arms = select.load("smoke")[2]
    picked = select.select_arms(arms, "dpo-easiest-q-val_loss, dpo_random_q")
    assert list(picked) == ["dpo_easiest_q_val_loss", "dpo_random_q"]
    with pytest.raises(SystemExit, match=r"dpo-nope.*dpo-random-q"):
        select.select_arms(arms, "dpo-nope")
