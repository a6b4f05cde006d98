"""Selection by any numeric key (`--keep_easiest q --by val_loss`, `--keep_per_source`) and the
difficulty signals side by side (issue 20, items 2 and 3).

    python -m pytest -q tests/test_selection.py

No model: 300 real AlpacaEval pairs with seeded synthetic difficulty columns (the columns
`sdpo curate crossfit` adds), so every check is an exact comparison with a naive recomputation.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import shared
from sdpo_kit.cli import app
from sdpo_kit.curate.strategies import STRATEGIES, SplitConfig, split_frame
from sdpo_kit.io import write_parquet


@pytest.fixture(scope="module")
def difficulty(tmp_path_factory):
    """300 pairs; source "math" (60 pairs) holds the hardest val_loss, so a global cut wipes it out."""
    from sdpo_kit.data import load_pairs

    pairs = load_pairs(shared("alpaca_eval_pairs.parquet")).pairs.head(300)
    rng = np.random.default_rng(0)
    n = pairs.height
    source = ["math" if i % 5 == 0 else ("chat" if i % 2 else "code") for i in range(n)]
    val_loss = rng.uniform(0.3, 0.7, n) + np.array([0.5 if s == "math" else 0.0 for s in source])
    margins = [[float(m) for m in rng.normal(0.5 - v, 0.3, 2)] for v in val_loss]
    frame = pairs.with_columns(
        pl.Series("source", source), pl.Series("margin", rng.normal(0, 2, n)),
        pl.Series("chosen_tokens", rng.integers(5, 200, n)), pl.Series("rejected_tokens", rng.integers(5, 200, n)),
        pl.Series("val_loss", val_loss), pl.Series("learned_share", [sum(m > 0 for m in r) / 2 for r in margins]),
        pl.Series("n_runs", [2] * n), pl.Series("crossfit_margins", margins, dtype=pl.List(pl.Float64)))
    path = tmp_path_factory.mktemp("select") / "difficulty.parquet"
    write_parquet(path, frame, metadata={"sdpo_kit.scorer": json.dumps({"model": "synthetic"})})
    return frame, path


def kept_and_dropped(frame, **kw):
    parts, dropped = split_frame(frame, SplitConfig(**kw))
    return pl.concat(parts), parts, dropped


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_keep_easiest_by_val_loss_keeps_the_lowest_loss_with_every_strategy(difficulty, strategy):
    frame, _ = difficulty
    kept, parts, dropped = kept_and_dropped(frame, strategy=strategy, steps=None if strategy == "by-source" else 2,
                                            keep_easiest=0.7, by="val_loss")
    assert kept.height == round(0.7 * frame.height)
    assert set(dropped["drop_reason"]) == {"not_easiest"}
    assert kept["val_loss"].max() <= dropped["val_loss"].min()  # the lowest loss is the easiest


def test_easy_to_hard_by_val_loss_puts_low_loss_first(difficulty):
    frame, _ = difficulty
    _, parts, _ = kept_and_dropped(frame, strategy="easy-to-hard", steps=2, by="val_loss")
    assert parts[0]["val_loss"].max() <= parts[1]["val_loss"].min()
    _, parts, _ = kept_and_dropped(frame, strategy="easy-to-hard", steps=2, by="val_loss", easier="higher")
    assert parts[0]["val_loss"].min() >= parts[1]["val_loss"].max()  # --easier higher: the user's call


def test_random_after_keep_easiest_is_filter_then_shuffle(difficulty):
    frame, _ = difficulty
    _, parts, dropped = kept_and_dropped(frame, strategy="random", steps=2, seed=3, keep_easiest=0.7, by="val_loss")
    easiest = frame.sort("val_loss").head(round(0.7 * frame.height))
    filtered = frame.filter(pl.col("pair_id").is_in(easiest["pair_id"].implode()))  # input order
    shuffled, _ = split_frame(filtered, SplitConfig(strategy="random", steps=2, seed=3, by="val_loss"))
    assert [p["pair_id"].to_list() for p in parts] == [p["pair_id"].to_list() for p in shuffled]
    assert parts[0]["val_loss"].max() > parts[1]["val_loss"].min()  # shuffled, not easiest first


def test_keep_per_source_keeps_every_source(difficulty):
    frame, _ = difficulty
    kept, _, _ = kept_and_dropped(frame, strategy="random", steps=2, keep_easiest=0.7, by="val_loss")
    assert "math" not in set(kept["source"])  # the global cut wipes the hard source out
    kept, _, _ = kept_and_dropped(frame, strategy="random", steps=2, keep_easiest=0.7, by="val_loss",
                                  keep_per_source=True)
    for source, group in frame.group_by("source"):
        mine = kept.filter(pl.col("source") == source[0])
        assert mine.height == round(0.7 * group.height) > 0
        assert set(mine["pair_id"]) == set(group.sort("val_loss")["pair_id"].head(mine.height))


def test_manifest_and_card_show_sources_signals_and_mislabelled(difficulty, tmp_path):
    frame, path = difficulty
    result = CliRunner().invoke(app, ["curate", "split", str(path), "--out", str(tmp_path / "p"), "--strategy",
                                      "random", "--steps", "2", "--keep_easiest", "0.7", "--by", "val_loss"])
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if line.startswith("selection warning")]
    assert len(warning) == 1 and "math 100%" in warning[0]
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    sel = manifest["selection"]
    assert sel["sources"]["math"] == {"in": 60, "kept": 0, "drop_share": 1.0}
    assert sum(s["kept"] for s in sel["sources"].values()) == sel["pairs_kept"] == 210
    sig = manifest["signals"]
    assert sig["names"] == ["margin", "val_loss", "learned_share", "judge_confidence", "judge_preference",
                            "log_length_ratio"]  # the judge columns come with the AlpacaEval pairs
    from sdpo_kit.stats import spearman

    lr = np.log(frame["chosen_tokens"].to_numpy() / frame["rejected_tokens"].to_numpy())
    assert sig["spearman"][1][5] == pytest.approx(spearman(frame["val_loss"], lr), abs=1e-12)
    naive = sum(1 for g, ms in zip(frame["margin"], frame["crossfit_margins"]) if g < 0 and all(m < 0 for m in ms))
    assert sig["likely_mislabelled"] == naive > 0
    card = (tmp_path / "p" / "README.md").read_text()
    assert "## Selection" in card and "| math | 60 | 0 | 100.0% |" in card and "selection warning" in card
    assert "## Difficulty signals" in card and f"Likely mislabelled: **{naive}** of 300" in card

    result = CliRunner().invoke(app, ["curate", "split", str(path), "--out", str(tmp_path / "q"), "--strategy",
                                      "random", "--steps", "2", "--keep_easiest", "0.7", "--by", "val_loss",
                                      "--keep_per_source"])
    assert result.exit_code == 0 and "selection warning" not in result.output
    sel = json.loads((tmp_path / "q" / "manifest.json").read_text())["selection"]
    assert all(s["kept"] == round(0.7 * s["in"]) > 0 for s in sel["sources"].values())


def test_data_card_scored_shows_the_signal_matrix(difficulty, tmp_path):
    _, path = difficulty
    result = CliRunner().invoke(app, ["data", "card", str(path), "--scored", "--out", str(tmp_path / "card")])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "card" / "README.md").read_text()
    assert "Difficulty signals" in card and "| val_loss |" in card and "Likely mislabelled" in card


def test_keep_per_source_needs_keep_easiest():
    with pytest.raises(ValueError, match="keep_per_source needs --keep_easiest"):
        SplitConfig(keep_per_source=True)
