"""The report's verdict: the paired bootstrap on hand-derivable cases, and the verdict at the top of the report.

    python -m pytest -q tests/test_verdict.py
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from sdpo_kit.report.html import ReportConfig, write_report
from sdpo_kit.stats import call, paired_bootstrap
from test_report import write_contract_run


def test_constant_differences_give_a_zero_width_interval_at_that_value():
    rng = np.random.default_rng(0)
    b = rng.normal(0, 3, (1, 30))  # one seed each; a is b + 0.5 on every pair
    r = paired_bootstrap(b + 0.5, b, draws=2000)
    assert r["mean"] == pytest.approx(0.5) and (r["lo"], r["hi"]) == (pytest.approx(0.5), pytest.approx(0.5))
    assert r["p_positive"] == 1.0 and call(r) == "ahead" and (r["pairs"], r["clusters"], r["seeds_a"]) == (30, 30, 1)
    # Seeds are resampled per arm: seeds that agree pair by pair leave the interval at zero width,
    # seeds that disagree widen it (training noise is part of the answer).
    same = paired_bootstrap(np.repeat(b + 0.5, 3, axis=0), np.repeat(b, 2, axis=0), draws=2000)
    assert (same["lo"], same["hi"], same["seeds_a"], same["seeds_b"]) == (
        pytest.approx(0.5), pytest.approx(0.5), 3, 2)
    noisy = paired_bootstrap(np.vstack([b + 0.0, b + 1.0]), b, draws=2000)
    assert noisy["mean"] == pytest.approx(0.5) and noisy["lo"] == pytest.approx(0.0) and noisy["hi"] == pytest.approx(1.0)


def test_sign_cases():
    # Swapping the arms negates every draw: the interval flips around 0.
    rng = np.random.default_rng(1)
    a, b = rng.normal(1, 1, (1, 25)), rng.normal(0, 1, (1, 25))
    fwd, back = paired_bootstrap(a, b, draws=3000), paired_bootstrap(b, a, draws=3000)
    assert back["mean"] == pytest.approx(-fwd["mean"])
    assert (back["lo"], back["hi"]) == (pytest.approx(-fwd["hi"]), pytest.approx(-fwd["lo"]))
    assert call(fwd) == "ahead" and call(back) == "behind"
    # Differences +1 and −1 on two pairs: a draw's mean is −1, 0 or +1 (p = 1/4, 1/2, 1/4), so the
    # 95 % interval is [−1, +1] around a mean of 0: not distinguishable.
    r = paired_bootstrap(np.array([[1.0, -1.0]]), np.zeros((1, 2)), draws=4000)
    assert r["mean"] == 0.0 and (r["lo"], r["hi"]) == (-1.0, 1.0) and call(r) == "not distinguishable"
    assert set(np.round(r["draws"], 9)) == {-1.0, 0.0, 1.0}


def test_clusters_move_together():
    # Prompt p: one pair with difference 1; prompt q: two pairs with difference 3 (as analysis/compare.py).
    r = paired_bootstrap(np.array([[1.0, 3.0, 3.0]]), np.zeros((1, 3)), np.array(["p", "q", "q"]), draws=4000)
    assert set(np.round(r["draws"], 9)) == {1.0, 3.0, round(7 / 3, 9)} and r["clusters"] == 2


def test_mismatched_pairs_are_refused():
    with pytest.raises(ValueError, match="same pairs"):
        paired_bootstrap(np.zeros((1, 3)), np.zeros((1, 4)))


def _shift_final(run, other, delta: float) -> None:
    """Make `run`'s final γ equal `other`'s final γ + delta on every held-out pair."""
    src = pl.read_parquet(other / "eval" / "scores.parquet")
    final_o = json.loads((other / "eval" / "eval.json").read_text())["models"][-1]["name"]
    scores = pl.read_parquet(run / "eval" / "scores.parquet")
    final = json.loads((run / "eval" / "eval.json").read_text())["models"][-1]["name"]
    scores = scores.drop(f"gamma_{final}").join(
        src.select("pair_id", (pl.col(f"gamma_{final_o}") + delta).alias(f"gamma_{final}")), on="pair_id")
    scores.write_parquet(run / "eval" / "scores.parquet")


def test_report_opens_with_the_verdict_warnings_and_every_model(tmp_path):
    sdpo = write_contract_run(tmp_path, "sdpo", steps=3, seed=1, label="sdpo", opt_steps=(1,))
    dpo = write_contract_run(tmp_path, "dpo", steps=1, seed=2, label="dpo")
    meta = json.loads((dpo / "run.json").read_text())
    (dpo / "run.json").write_text(json.dumps(meta | {"mode": "dpo"}))
    _shift_final(sdpo, dpo, 0.3)
    ev = json.loads((sdpo / "eval" / "eval.json").read_text())
    (sdpo / "eval" / "eval.json").write_text(json.dumps(ev | {"data": ev["data"] | {"rejected": 3}}))
    (sdpo / "eval" / "rejects.jsonl").write_text("".join(
        json.dumps({"file": "h.parquet", "row": i, "reason": "prompt_too_long", "model": m}) + "\n"
        for i in (1, 2, 3) for m in ("S", "M1")))
    out = tmp_path / "report"
    paths = write_report(ReportConfig([sdpo, dpo], str(out)))
    line = ("sdpo vs dpo on 40 held-out pairs: Δ mean γ +0.30 (95 % CI +0.30…+0.30), sdpo ahead. "
            "[n = 40 pairs; seeds 1 vs 1; Δ reward margin vs S = β·Δγ = +0.030]")
    md = paths["summary"].read_text()
    page = paths["html"].read_text()
    assert md.startswith("# sDPO report\n\n## Verdict\n\n**" + line + "**")
    # Verdict and warning lines carry run names, so they are escaped as markdown (`<` as `&lt;`, rendered `<`).
    assert "Only 40 held-out pairs (&lt; 100)" in md and "One seed per configuration" in md
    assert "sdpo: 3 of 43 held-out pairs dropped (prompt_too_long 3)" in md
    # The verdict box comes before every figure and table of the page; strings are escaped.
    call, _, detail = line.partition(" [")
    assert page.index("id='verdict'") < page.index("<figure")
    assert f"<p class='call'>{call} <span class='detail'>[{detail}</span></p>" in page
    # sDPO's M1, M2, M3 beside DPO's M1, S once, each with n.
    top = md.split("## Runs compared")[0]
    rows = [ln for ln in top.splitlines() if ln.startswith("| ") and not ln.startswith("| run |")]
    assert [r.split(" | ")[:3] for r in rows] == [["| S (start)", "S", "40"], ["| sdpo", "M1", "40"],
                                                  ["| sdpo", "M2", "40"], ["| sdpo", "M3", "40"], ["| dpo", "M1", "40"]]
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["results"][0]["call"] == "ahead" and verdict["results"][0]["pairs"] == 40
    # Panels with nothing to show: sdpo logged one loss point per step.
    figs = json.loads((out / "figures.json").read_text())
    assert "sdpo_loss_accuracy" not in figs and "dpo_loss_accuracy" in figs
    assert "Loss and reward accuracy per step left out: each step logged 1 training point" in page


def test_one_source_drops_the_per_source_panel_and_one_run_has_no_verdict(tmp_path):
    run = write_contract_run(tmp_path, "solo")
    scores = pl.read_parquet(run / "eval" / "scores.parquet").with_columns(pl.lit("only").alias("source"))
    from sdpo_kit.report.evaluate import eval_results

    names = ["S", "M1", "M2"]
    result = eval_results(scores.select("pair_id", "source", *[f"gamma_{n}" for n in names]), names, 0.1,
                       {"reference_schedule": "stepwise", "steps": [{"step": t, "dir": f"step_{t}"} for t in (1, 2)]})
    result.pop("table")
    result |= {"data": {"path": "heldout.parquet", "pairs": scores.height, "rejected": 0}, "beta": 0.1}
    (run / "eval" / "eval.json").write_text(json.dumps(result))
    paths = write_report(ReportConfig([run], str(tmp_path / "r")))
    figs = json.loads((tmp_path / "r" / "figures.json").read_text())
    assert len(figs["solo_reference_margins"]["axes"]) == 1
    assert "Preference accuracy per source left out: the held-out pairs have one source" in paths["html"].read_text()
    assert "One configuration only: nothing to compare" in paths["summary"].read_text()


def test_margin_stats_are_float64_whatever_the_column_dtype():
    """The one group-statistics helper (split manifest, cards, eval.json): pairs, mean, median and the
    share > 0, computed in float64 like `Series.mean()` even for a float32 column."""
    import polars as pl

    from sdpo_kit.stats import margin_stats

    x = pl.Series("m", [0.1, 0.2, 0.7, 1e-3, -0.5], dtype=pl.Float32)
    got = x.to_frame().select(margin_stats("m", median=True)).row(0, named=True)
    assert got == {"pairs": 5, "mean_margin": x.mean(), "median_margin": x.median(), "reward_accuracy": 0.8}
    assert got["mean_margin"] != x.to_frame().select(pl.col("m").mean()).item()  # float32 arithmetic would differ
    per = pl.DataFrame({"g": ["a", "b", "a"], "margin": [1.0, -1.0, -2.0]}).group_by("g").agg(margin_stats()).sort("g")
    assert per.rows() == [("a", 2, -0.5, 0.5), ("b", 1, -1.0, 0.0)] and margin_stats(None)[0].meta.output_name() == "pairs"
