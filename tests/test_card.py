"""`sdpo data card` and the card plot functions, on the real shared datasets.

The scored cases use the length-proxy scored AlpacaEval pairs of tests/test_split.py
(margin from token counts, no model) and, once the scorer exists, the tiny model for real.
"""

from __future__ import annotations

import json
from collections import Counter

import matplotlib
import matplotlib.image

matplotlib.use("Agg")
import polars as pl  # noqa: E402
import pytest  # noqa: E402
from huggingface_hub import DatasetCard  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from conftest import shared  # noqa: E402
from sdpo_kit import plots  # noqa: E402
from sdpo_kit.curate.card import CardConfig, draw_plots, run, write_dataset_card  # noqa: E402
from sdpo_kit.errors import UsageError  # noqa: E402
from sdpo_kit.cli import app  # noqa: E402
from test_split import alpaca_pairs, length_proxy  # noqa: E402,F401  (session fixtures reused)

PNG = b"\x89PNG\r\n\x1a\n"


def test_unscored_card_of_each_shared_dataset(tmp_path):
    from sdpo_kit.data import load_pairs

    for name in ("dpo_en_demo.json", "hh_harmless_base_test.jsonl.gz"):
        out = tmp_path / name
        result = CliRunner().invoke(app, ["data", "card", str(shared(name)), "--out", str(out)])
        assert result.exit_code == 0, result.output
        card = DatasetCard.load(out / "README.md")
        loaded = load_pairs(shared(name))
        assert card.data.pretty_name == f"Preference pairs: {name}"
        assert f"{loaded.rows} input rows, {loaded.pairs.height} valid pairs, {len(loaded.rejects)} rows rejected" in card.text
        for reason, n in Counter(r.reason for r in loaded.rejects).items():
            assert f"- `{reason}`: {n}" in card.text
        assert "Not scored" in card.text and "margin_hist.png" not in card.text
        for png in ("source_mix", "lengths"):
            assert (out / "plots" / f"{png}.png").read_bytes()[:8] == PNG
        # Lengths are characters when unscored: the dataset-level mean matches a direct count.
        chars = loaded.pairs["chosen"].list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()
        assert f"| all | {loaded.pairs.height} | " in card.text and f"{chars.mean():.3f}" in card.text


def test_scored_parquet_card_shows_margins_per_source(length_proxy, tmp_path):
    out = tmp_path / "card"
    write_dataset_card(CardConfig(str(length_proxy), str(out)))
    card = DatasetCard.load(out / "README.md")
    df = pl.read_parquet(length_proxy)
    assert "mean_margin" in card.text and "mean_chosen_tokens" in card.text
    vicuna = df.filter(pl.col("source") == "vicuna")
    row = next(line for line in card.text.splitlines() if line.startswith("| vicuna |"))
    assert row.split(" | ")[1] == str(vicuna.height)
    assert float(row.split(" | ")[2]) == pytest.approx(vicuna["margin"].mean(), abs=1e-3)
    assert float(row.split(" | ")[4]) == pytest.approx((vicuna["margin"] > 0).mean(), abs=1e-3)
    assert (out / "plots" / "margin_hist.png").read_bytes()[:8] == PNG
    assert json.loads(card.text.split("```json\n")[1].split("```")[0]) == {"model": "none: length proxy"}
    with pytest.raises(FileExistsError):
        write_dataset_card(CardConfig(str(length_proxy), str(out)))


def test_scored_card_with_the_tiny_model_on_a_subset(tiny_model_dir, tmp_path):
    out = tmp_path / "card"
    result = CliRunner().invoke(app, ["data", "card", str(shared("dpo_en_demo.json")), "--out", str(out), "--scored",
                                      "--model", str(tiny_model_dir), "--sample", "24", "--max-length", "256"])
    assert result.exit_code == 0, result.output
    card = DatasetCard.load(out / "README.md")
    assert "seeded random subset: 24 of the" in card.text and "mean_margin" in card.text
    # Lengths and source mix still describe every valid pair, not just the scored subset.
    assert "| all | 295 | " in card.text
    assert (out / "plots" / "margin_hist.png").read_bytes()[:8] == PNG


def test_card_plots_draw_every_group_with_the_report_functions(length_proxy, tmp_path):
    """A partition card's plots: γ_ref per step (every pair counted once, shared bins), pairs per source
    per step, lengths per step; 700 x 400 px PNGs."""
    data = pl.read_parquet(length_proxy).with_columns((pl.int_range(pl.len()) % 3 + 1).alias("step"))
    drawn = draw_plots(tmp_path, data, "step", data, data, "step", "the curation reference")
    sizes = [data.filter(pl.col("step") == t).height for t in (1, 2, 3)]
    hists = drawn["margin_hist"][0]["hists"]
    assert [h["label"].split(" (")[0] for h in hists] == ["step 1", "step 2", "step 3"]  # one histogram per step
    assert [sum(h["counts"]) for h in hists] == sizes and hists[0]["edges"] == hists[2]["edges"]
    mix = drawn["source_mix"][0]
    assert mix["ticks"] == ["step 1", "step 2", "step 3"]
    assert len(mix["bars"]) == data["source"].n_unique()  # a bar segment per (step, source)
    assert [sum(v) for v in zip(*(b["values"] for b in mix["bars"]))] == sizes  # each step's pairs add up
    vicuna = next(b for b in mix["bars"] if b["label"] == "vicuna")["values"]
    assert vicuna == [data.filter((pl.col("step") == t) & (pl.col("source") == "vicuna")).height for t in (1, 2, 3)]
    assert drawn["lengths"][0]["ylabel"] == "length (tokens)"
    for name in drawn:
        assert matplotlib.image.imread(tmp_path / "plots" / f"{name}.png").shape[:2] == (400, 700)


def test_pngs_are_deterministic(length_proxy, tmp_path):
    data = pl.read_parquet(length_proxy)
    hists = [{"step": 1, "margin": data["margin"].to_list()}]
    draw = lambda a: plots.plot_partition_margins(hists, a[0])  # noqa: E731
    a = plots.save_figure(draw, tmp_path / "a.png", **plots.CARD)["png"]
    b = plots.save_figure(draw, tmp_path / "b.png", **plots.CARD)["png"]
    assert a == b == (tmp_path / "a.png").read_bytes() and a[:8] == PNG
    assert b"Software" not in a and b"Software" not in plots.save_figure(draw)["png"]  # report figures too


def test_card_config_runs_the_command(tmp_path, capsys):
    out = tmp_path / "card"
    path = run(CardConfig(data=str(shared("dpo_en_demo.json")), out=str(out)))
    assert path == out / "README.md" and capsys.readouterr().out == f"wrote {path}\n"
    assert DatasetCard.load(path).data.pretty_name == "Preference pairs: dpo_en_demo.json"
    with pytest.raises(UsageError, match="--sample"):
        CardConfig(data="x", out="y", scored=True, sample=0)
