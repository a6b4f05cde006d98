"""`sdpo data split` (train / held-out / validation by prompt) and `sdpo eval`'s overlap warning.

    python -m pytest -q tests/test_heldout.py
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import shared
from sdpo_kit.cli import app


def _cli(*argv, code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in argv])
    assert result.exit_code == code, (argv, result.output, result.exception)
    return result


def _prompts(path) -> set[str]:
    return set(pl.read_parquet(path)["prompt"].list.last().struct.field("content").to_list())


@pytest.fixture(scope="module")
def alpaca_split(tmp_path_factory):
    out = tmp_path_factory.mktemp("split")
    result = _cli("data", "split", shared("alpaca_eval_pairs.parquet"), "--heldout", "0.2", "--validation", "0.1",
                  "--by", "prompt", "--seed", "0", "--out", out / "a")
    return out, result.output


def test_split_by_prompt_is_disjoint_complete_and_recorded(alpaca_split):
    from sdpo_kit.data import load_pairs

    out, output = alpaca_split
    sides = {s: _prompts(out / "a" / f"{s}.parquet") for s in ("train", "validation", "heldout")}
    assert not (sides["train"] & sides["heldout"] or sides["train"] & sides["validation"]
                or sides["validation"] & sides["heldout"])
    valid = load_pairs(shared("alpaca_eval_pairs.parquet")).pairs
    everyone = set(valid["prompt"].list.last().struct.field("content").to_list())
    assert set().union(*sides.values()) == everyone
    assert len(sides["heldout"]) == round(0.2 * len(everyone)) and len(sides["validation"]) == round(0.1 * len(everyone))
    # Every valid pair is on exactly one side, with its prompt's side.
    ids = [pl.read_parquet(out / "a" / f"{s}.parquet")["pair_id"].to_list() for s in sides]
    assert sorted(sum(ids, [])) == sorted(valid["pair_id"].to_list())
    manifest = json.loads((out / "a" / "manifest.json").read_text())
    assert manifest["overlap"]["prompt"] == 0 and manifest["overlap"]["pair_id"] == 0
    assert {s: v["prompts"] for s, v in manifest["sides"].items()} == {s: len(p) for s, p in sides.items()}
    assert manifest["input"]["rows"] == 18982 and manifest["input"]["valid"] == valid.height
    assert "prompts on two sides: 0, pair ids on two sides: 0" in output


def test_split_is_seeded_and_matches_the_analysis_split(alpaca_split, tmp_path):
    out, _ = alpaca_split
    _cli("data", "split", shared("alpaca_eval_pairs.parquet"), "--heldout", "0.2", "--validation", "0.1",
         "--seed", "0", "--out", tmp_path / "b")
    _cli("data", "split", shared("alpaca_eval_pairs.parquet"), "--heldout", "0.2", "--seed", "1", "--out", tmp_path / "c")
    for side in ("train", "validation", "heldout"):
        assert pl.read_parquet(out / "a" / f"{side}.parquet").equals(pl.read_parquet(tmp_path / "b" / f"{side}.parquet"))
    assert _prompts(tmp_path / "c" / "heldout.parquet") != _prompts(out / "a" / "heldout.parquet")
    assert not (tmp_path / "c" / "validation.parquet").exists()
    # The analysis's own split before it called the library (sorted prompts, one numpy
    # permutation, held-out first): the held-out prompts are identical.
    from sdpo_kit.data import load_pairs

    valid = load_pairs(shared("alpaca_eval_pairs.parquet")).pairs
    prompts = sorted(valid["prompt"].list.last().struct.field("content").unique().to_list())
    order = np.random.default_rng(0).permutation(len(prompts))
    n_held, n_val = round(0.2 * len(prompts)), round(0.1 * len(prompts))
    shuffled = [prompts[i] for i in order]
    assert _prompts(out / "a" / "heldout.parquet") == set(shuffled[:n_held])
    assert _prompts(out / "a" / "validation.parquet") == set(shuffled[n_held:n_held + n_val])


def test_split_by_pair_records_shared_prompts(tmp_path):
    out = tmp_path / "p"
    _cli("data", "split", shared("alpaca_eval_pairs.parquet"), "--heldout", "0.5", "--by", "pair", "--out", out)
    manifest = json.loads((out / "manifest.json").read_text())
    train, held = (pl.read_parquet(out / f"{s}.parquet") for s in ("train", "heldout"))
    # AlpacaEval has several pairs per prompt: split pair by pair, prompts do cross (and the manifest says so).
    shared_prompts = _prompts(out / "train.parquet") & _prompts(out / "heldout.parquet")
    assert manifest["overlap"] == {**manifest["overlap"], "pair_id": 0, "prompt": len(shared_prompts)}
    assert len(shared_prompts) > 0 and held.height == round(0.5 * (train.height + held.height))


def test_overlap_counts_by_hand():
    from sdpo_kit.curate.heldout import overlap

    def frame(rows):
        return pl.DataFrame({"pair_id": [r[0] for r in rows],
                             "prompt": [[{"role": "user", "content": r[1]}] for r in rows]})

    # prompt "x" on sides a and b, "y" only on b (twice), pair id 2 on a and c: 1 prompt... and "z" on a and c.
    sides = {"a": frame([("1", "x"), ("2", "z")]), "b": frame([("3", "x"), ("4", "y"), ("5", "y")]),
             "c": frame([("2", "z")])}
    assert overlap(sides) == {"pair_id": 1, "prompt": 2}


@pytest.mark.parametrize("flags, code, message", [
    (["--heldout", "1.5"], 2, "--heldout 1.5: expected a share strictly between 0 and 1"),
    (["--heldout", "0.6", "--validation", "0.4"], 2, "heldout + validation < 1"),
    (["--by", "source"], 2, "--by 'source': expected one of prompt, pair"),
])
def test_split_bad_flags_answer_in_one_line(tmp_path, flags, code, message):
    result = _cli("data", "split", shared("dpo_en_demo.json"), "--out", tmp_path / "o", *flags, code=code)
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_split_missing_file_and_too_few_prompts(tmp_path):
    result = _cli("data", "split", tmp_path / "nope.jsonl", "--out", tmp_path / "o", code=1)
    assert f"error: {tmp_path / 'nope.jsonl'}: no such file or folder" in result.output
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    result = _cli("data", "split", one, "--out", tmp_path / "o", code=1)
    assert "1 distinct prompts: too few to hold out 0.2" in result.output


# --- sdpo eval: held-out pairs that the run trained on ---------------------------------------------

def test_eval_warns_once_with_counts_when_heldout_overlaps_training(tmp_path, tiny_model_dir):
    from sdpo_kit.data import load_pairs

    src = pl.read_parquet(shared("alpaca_eval_pairs.parquet")).filter(pl.col("prompt").str.len_chars() < 150)
    src.unique(subset="prompt", keep="first", maintain_order=True).head(6).write_parquet(tmp_path / "heldout.parquet")
    held = load_pairs(tmp_path / "heldout.parquet").pairs
    assert held.height == 6
    # Training saw held-out pairs 0, 1, 2 themselves and, for pair 3, its prompt with other answers.
    other = held[3].with_columns(pl.lit("x" * 16).alias("pair_id"),
                                 pl.col("chosen").list.eval(pl.element().struct.with_fields(
                                     pl.lit("another answer").alias("content"))))
    part = tmp_path / "parts" / "step_1.parquet"
    part.parent.mkdir()
    pl.concat([held[:3], other]).write_parquet(part)
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "mode": "stepwise", "base_model": str(tiny_model_dir), "base_fingerprint": None, "beta": 0.1,
        "steps": [{"step": 1, "dir": "step_1", "partition": [str(part)], "status": "pending"}]}))
    result = _cli("eval", "--run", run, "--data", tmp_path / "heldout.parquet", "--max-length", "96", "--models", "S")
    warning = ("[sdpo eval] warning: 4 of 6 held-out pairs overlap the run's training partitions "
               "(3 by pair_id, 4 by prompt): these are not held-out numbers")
    assert result.output.count(warning) == 1 and result.output.count("warning") == 1
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert ev["data"]["overlap_with_training"] == {"pairs": 6, "pair_id": 3, "prompt": 4, "any": 4}
    # Held-out pairs with no prompt in the partition: no warning, zeros recorded.
    held[3:].write_parquet(tmp_path / "clean.parquet")
    pl.concat([held[:3]]).write_parquet(part)
    result = _cli("eval", "--run", run, "--data", tmp_path / "clean.parquet", "--max-length", "96", "--models", "S",
                  "--out", run / "eval_clean")
    assert "warning" not in result.output
    assert json.loads((run / "eval_clean" / "eval.json").read_text())["data"]["overlap_with_training"]["any"] == 0
