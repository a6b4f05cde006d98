"""Length-controlled difficulty (issue 12): scorer columns, the --control-length residual, the ρ warning.

    PYTHONPATH=$PWD python -m pytest -q tests/test_length.py
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from test_score import canonical, close, text


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from sdpo_kit.models import load_model

    return load_model(tiny_model_dir)


def length_pairs():
    """Answers of clearly different token lengths both ways, one truncated, one equal-length pair."""
    rows = [(None, text(6, i), text(3 + 9 * i, i + 1), text(25 - 4 * i, i + 3)) for i in range(5)]
    rows.append((None, text(10, 7), text(80, 8), text(6, 9)))  # chosen cut at max_length=64
    rows.append((None, text(5, 11), "one two three", "four five six"))  # same length: shared = margin
    return canonical(rows)


def naive_token_logps(model, ids: list[int], start: int) -> list[float]:
    """Per-token log p of ids[start:] from one plain full-logits forward (no batching, no cache)."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    return [logits[t - 1, ids[t]].item() for t in range(max(start, 1), len(ids))]


def test_margin_shared_and_chars_against_naive_per_token_sums(tiny):
    from sdpo_kit.scoring.frame import ScoreConfig, score_frame
    from sdpo_kit.scoring.tokens import tokenize_pair, truncate

    model, tokenizer = tiny
    frame = length_pairs()
    # share_prefix=2 runs the same-opening pair through the shared-KV path, the rest in padded batches.
    scored, _ = score_frame(frame, model, tokenizer, ScoreConfig(max_length=64, token_budget=90, share_prefix=2),
                            progress=False)
    assert scored.height == frame.height and scored["chosen_truncated"].any()
    differ = 0
    for row in scored.iter_rows(named=True):
        p, c, r = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        lc = naive_token_logps(model, truncate(p, c, 64, "keep_start").ids, len(p))
        lr = naive_token_logps(model, truncate(p, r, 64, "keep_start").ids, len(p))
        k = min(len(lc), len(lr))
        assert close(row["margin_shared"], sum(lc[:k]) - sum(lr[:k])), (row["margin_shared"], sum(lc[:k]) - sum(lr[:k]))
        # The shorter answer contributes its whole sum; only the longer one is cut to k tokens.
        short, long_ = ("ref_chosen_logps", lr) if len(lc) <= len(lr) else ("ref_rejected_logps", lc)
        sign = 1 if short == "ref_chosen_logps" else -1
        assert close(row["margin_shared"], sign * (row[short] - sum(long_[:k])))
        differ += len(lc) != len(lr)
        assert row["chosen_chars"] == len(row["chosen"][0]["content"])
        assert row["rejected_chars"] == len(row["rejected"][0]["content"])
    assert differ >= 5  # the fixture really has lengths that differ
    same = scored.filter(pl.col("chosen_tokens") == pl.col("rejected_tokens"))
    assert same.height >= 1
    assert same["margin_shared"].to_list() == pytest.approx(same["margin"].to_list(), abs=1e-9)


def test_shared_margins_by_hand():
    """Chosen log-probs (-1, -2, -3), rejected (-0.5, -0.5): k = 2, shared = (-1 - 2) - (-0.5 - 0.5) = -2;
    a pair with an empty side has no shared part (None)."""
    import torch

    from sdpo_kit.scoring.logps import Scorer
    from sdpo_kit.scoring.frame import shared_margins

    scorer = Scorer.__new__(Scorer)  # only the bookkeeping, no model
    tokens = [[-1.0, -2.0, -3.0], [-0.5, -0.5], [-4.0], []]
    scorer.counts = torch.tensor([len(t) for t in tokens])
    scorer.prefix = [torch.tensor(t, dtype=torch.float64).cumsum(0) for t in tokens]
    assert shared_margins(scorer, 2) == [pytest.approx(-2.0), None]


# ---------------------------------------------------------------- the --control-length key

def scored_frame(chosen_tokens, rejected_tokens, margin, source=None) -> pl.DataFrame:
    """A scored file's columns without a model: the splitter only reads these."""
    n = len(margin)
    return pl.DataFrame({
        "pair_id": [f"p{i}" for i in range(n)], "prompt": [f"q{i}" for i in range(n)],
        "chosen": ["c"] * n, "rejected": ["r"] * n, "source": source or ["s"] * n,
        "margin": [float(m) for m in margin], "margin_per_token": [0.0] * n,
        "prompt_tokens": [5] * n, "chosen_tokens": [int(c) for c in chosen_tokens],
        "rejected_tokens": [int(r) for r in rejected_tokens],
    })


def write_scored(path, frame):
    import json

    from sdpo_kit.io import write_parquet

    write_parquet(path, frame, metadata={"sdpo_kit.scorer": json.dumps({"model": "none: synthetic"})})
    return path


def six_pairs() -> pl.DataFrame:
    """ln(chosen/rejected) = u·ln2 with u = -4, -2, 0, 2, 4, 6 and chosen·rejected = 256 for every pair,
    so ln chosen and ln rejected are (ln 256 ± u·ln2)/2: every length feature is a line in u.

    Least squares of margin y = (4, 1, 2, -1, 0, -6) on u, by hand: ȳ = 0, ū = 1,
    Σ(u-ū)² = 25+9+1+1+9+25 = 70, Σ(u-ū)y = -20-3-1-1+0-30 = -56, slope -0.8, intercept 0.8;
    fit (4, 2.4, 0.8, -0.8, -2.4, -4), residual (0, -1.4, 1.2, -0.2, 2.4, -2)."""
    u = [-4, -2, 0, 2, 4, 6]
    return scored_frame([2 ** ((8 + x) // 2) for x in u], [2 ** ((8 - x) // 2) for x in u], [4, 1, 2, -1, 0, -6])


SIX_RESIDUAL = [0.0, -1.4, 1.2, -0.2, 2.4, -2.0]


def test_residual_on_six_pairs_is_the_hand_computed_least_squares_line():
    from sdpo_kit.length import length_residual

    resid, record = length_residual(six_pairs(), "margin", n_knots=2, degree=1)
    assert resid.tolist() == pytest.approx(SIX_RESIDUAL, abs=1e-9)
    # Spearman by hand: residual ranks (4, 2, 5, 3, 6, 1) against 1..6: Σd² = 40, ρ = 1 - 6·40/210 = -1/7;
    # margin ranks (6, 4, 5, 2, 3, 1): Σd² = 66, ρ = 1 - 6·66/210 = -31/35.
    assert record["rho_length_after"] == pytest.approx(-1 / 7, abs=1e-4)
    assert record["rho_length_before"] == pytest.approx(-31 / 35, abs=1e-4)
    assert record["fitted_pairs"] == 6 and (record["n_knots"], record["degree"]) == (2, 1)


def test_control_length_split_orders_by_the_residual(tmp_path):
    """Through the CLI: step 1 gets the three largest residuals (pairs 5, 3, 1), not the three
    largest margins (pairs 1, 3, 2); the key is stored, the fit recorded in manifest and card."""
    import json

    from sdpo_kit.cli import app

    path = write_scored(tmp_path / "six.parquet", six_pairs())
    runner = CliRunner()
    res = runner.invoke(app, ["curate", "split", str(path), "--steps", "2", "--out", str(tmp_path / "lc"),
                              "--control-length", "--control-knots", "2", "--control-degree", "1"])
    assert res.exit_code == 0, res.output
    step1 = pl.read_parquet(tmp_path / "lc" / "step_1.parquet")
    assert step1["pair_id"].to_list() == ["p0", "p2", "p4"]
    # 6 pairs make one bin: the key is the residual's percentile (rank - 0.5) / 6, ranks 4, 5, 6.
    assert step1["margin_lc"].to_list() == pytest.approx([3.5 / 6, 4.5 / 6, 5.5 / 6])
    raw = runner.invoke(app, ["curate", "split", str(path), "--steps", "2", "--out", str(tmp_path / "raw")])
    assert raw.exit_code == 0, raw.output
    assert pl.read_parquet(tmp_path / "raw" / "step_1.parquet")["pair_id"].to_list() == ["p0", "p1", "p2"]
    manifest = json.loads((tmp_path / "lc" / "manifest.json").read_text())
    control = manifest["length"]["control_length"]
    assert control["key"] == "margin" and control["rho_length_after"] == pytest.approx(-1 / 7, abs=1e-4)
    assert control["bins"] == 1 and control["rho_length_residual"] == pytest.approx(-1 / 7, abs=1e-4)
    assert manifest["params"]["control_length"] is True and manifest["length"]["key"] == "margin_lc"
    assert "control-length: key `margin_lc`" in res.output
    card = (tmp_path / "lc" / "README.md").read_text()
    assert "## Length" in card and "plots/key_vs_length.png" in card and "n_knots" in card
    assert (tmp_path / "lc" / "plots" / "key_vs_length.png").stat().st_size > 1000


def curved_pairs(n: int = 400, seed: int = 1):
    """Margin = a curved function of the lengths + an independent difficulty d."""
    rng = np.random.default_rng(seed)
    lc, lr, d = rng.uniform(2, 7, n), rng.uniform(2, 7, n), rng.normal(size=n)
    margin = -3 * np.tanh(2 * (lc - lr)) - 0.5 * (lc - 4.5) ** 2 + d
    return scored_frame(np.exp(lc).round(), np.exp(lr).round(), margin), d


def test_flexible_fit_removes_a_curved_length_effect_a_line_does_not():
    from sdpo_kit.length import length_residual, spearman

    frame, d = curved_pairs()
    line, line_rec = length_residual(frame, "margin", n_knots=2, degree=1)
    spline, rec = length_residual(frame, "margin")
    assert rec["rho_length_before"] < -0.7
    assert abs(rec["rho_length_after"]) <= 0.05
    assert spearman(spline, d) > 0.9 > spearman(line, d) + 0.3  # the residual is the difficulty, not length
    assert rec["r2"] > line_rec["r2"]


# ---------------------------------------------------------------- the diagnosis and its warning

def length_driven(n: int = 200, seed: int = 0, independent: bool = False):
    """Margin = -(chosen_tokens - rejected_tokens) (what a summed margin mostly is), or independent noise."""
    rng = np.random.default_rng(seed)
    c, r = rng.integers(20, 600, n), rng.integers(20, 600, n)
    margin = rng.normal(size=n) if independent else -(c - r).astype(float)
    return scored_frame(c, r, margin, source=[("a", "b")[i % 2] for i in range(n)])


def test_warning_fires_when_the_margin_is_length_and_not_when_independent():
    from sdpo_kit.length import diagnose, score_diagnosis

    bad = diagnose(length_driven(), "margin")
    assert bad["rho_length"] < -0.9
    assert bad["warning"].startswith("warning: the order by `margin` is largely answer length")
    assert "--control_length" in bad["warning"] and "--by margin_per_token" in bad["warning"]
    fine = diagnose(length_driven(independent=True), "margin")
    assert abs(fine["rho_length"]) < 0.2 and fine["warning"] is None
    lines = score_diagnosis(length_driven())
    assert lines[0].startswith("length: Spearman ρ with ln(chosen/rejected tokens): margin -0.9")
    assert lines[1] == bad["warning"]
    assert len(score_diagnosis(length_driven(independent=True))) == 1


def test_judge_column_is_diagnosed_too():
    from sdpo_kit.length import diagnose

    frame = length_driven().with_columns((-pl.col("margin")).alias("judge_confidence"))
    assert diagnose(frame, "margin")["rho_judge"] == {"judge_confidence": pytest.approx(-1.0)}


def test_split_prints_and_cards_the_warning_and_control_length_clears_it(tmp_path):
    import json

    from sdpo_kit.cli import app

    path = write_scored(tmp_path / "len.parquet", length_driven(300))
    runner = CliRunner()
    by_margin = runner.invoke(app, ["curate", "split", str(path), "--steps", "3", "--out", str(tmp_path / "m")])
    assert by_margin.exit_code == 0, by_margin.output
    warning = [line for line in by_margin.output.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "`margin`" in warning[0]
    card = (tmp_path / "m" / "README.md").read_text()
    assert "largely answer length" in card
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["length"]["rho_step_length"] > 0.8  # easy-to-hard here is short-chosen-first
    steps = manifest["length"]["per_step"]
    assert [s["step"] for s in steps] == [1, 2, 3] and steps[0]["chosen_rejected_ratio"] < steps[2]["chosen_rejected_ratio"]

    lc = runner.invoke(app, ["curate", "split", str(path), "--steps", "3", "--out", str(tmp_path / "lc"),
                             "--control-length"])
    assert lc.exit_code == 0, lc.output
    assert "warning:" not in lc.output and "largely answer length" not in (tmp_path / "lc" / "README.md").read_text()
    record = json.loads((tmp_path / "lc" / "manifest.json").read_text())["length"]
    assert abs(record["rho_key_length"]) <= 0.05 and abs(record["rho_step_length"]) <= 0.1


def test_stratify_length_keeps_each_steps_length_mix(tmp_path):
    """Ordered by a length-driven margin, but each step holds 1/3 of every length-ratio quintile
    (and, with source too, of every source x quintile cell)."""
    from sdpo_kit.length import length_buckets, spearman
    from sdpo_kit.curate.split import SplitConfig, split_frame

    frame = length_driven(300)
    bucket = dict(zip(frame["pair_id"], length_buckets(frame, 5).tolist()))
    assert sorted(pl.Series(list(bucket.values())).value_counts()["count"].to_list()) == [60] * 5
    for stratify in ("length", "source,length"):
        parts, _ = split_frame(frame, SplitConfig(steps=3, stratify=stratify))
        for part in parts:
            counts = pl.Series([bucket[p] for p in part["pair_id"]]).value_counts()
            # Exactly a third of each quintile; with source too, a third of each (source, quintile) cell,
            # each rounded by at most one pair, so a quintile's count is within 2 of a third.
            slack = 0 if stratify == "length" else 2
            assert all(abs(n - 20) <= slack for n in counts["count"]) and counts.height == 5, (stratify, counts)
        step = {p: t for t, part in enumerate(parts, 1) for p in part["pair_id"]}
        ratio = np.log(frame["chosen_tokens"] / frame["rejected_tokens"]).to_numpy()
        # Only the order within a quintile is left to correlate with length (it is ~0.9 unstratified).
        assert abs(spearman([step[p] for p in frame["pair_id"]], ratio)) <= 0.2
    plain, _ = split_frame(frame, SplitConfig(steps=3))
    step = {p: t for t, part in enumerate(plain, 1) for p in part["pair_id"]}
    assert spearman([step[p] for p in frame["pair_id"]], ratio) > 0.8
    parts, _ = split_frame(frame, SplitConfig(steps=3, stratify="source,length"))
    for part in parts:
        assert all(abs(n - 50) <= 3 for n in part["source"].value_counts()["count"])  # 5 cells, each ±1


def test_length_flags_refuse_what_they_cannot_do(tmp_path):
    from sdpo_kit.curate.split import SplitConfig, split_file

    with pytest.raises(ValueError, match="stratify='bogus'"):
        SplitConfig(stratify="bogus")
    with pytest.raises(ValueError, match="control_length"):
        SplitConfig(strategy="random", control_length=True)
    path = write_scored(tmp_path / "x.parquet", six_pairs().drop("chosen_tokens"))
    with pytest.raises(ValueError, match=r"missing column\(s\) \['chosen_tokens'\]"):
        split_file(path, tmp_path / "out", SplitConfig(control_length=True))


# ---------------------------------------------------------------- eval and report

def heldout_table():
    """10 held-out pairs, ln(chosen/rejected tokens) = ln 2 · (-4, -3, ..., 5), two models.

    Quintiles (2 pairs each, by ratio): S's γ = (-1, 2 | -3, 4 | 5, -6 | -7, -8 | 9, -10): summed accuracy
    1/2, 1/2, 1/2, 0, 1/2, overall 4/10; per-token γ all positive in the first two quintiles only: 4/10."""
    u = np.arange(-4, 6)
    gamma_s = [-1.0, 2, -3, 4, 5, -6, -7, -8, 9, -10]
    avg_s = [0.1, 0.2, 0.3, 0.4, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6]
    gamma_m = [1.0] * 10
    table = pl.DataFrame({"pair_id": [f"h{i}" for i in range(10)], "source": ["a"] * 10,
                          "gamma_S": gamma_s, "gamma_M1": gamma_m})
    scored = {"S": pl.DataFrame({"pair_id": table["pair_id"], "margin_per_token": avg_s,
                                 "chosen_tokens": [int(2 ** (6 + x)) for x in u], "rejected_tokens": [64] * 10}),
              "M1": pl.DataFrame({"pair_id": table["pair_id"], "margin_per_token": [-0.5] * 10,
                                  "chosen_tokens": [1] * 10, "rejected_tokens": [1] * 10})}
    return table, scored, u


def test_eval_length_summary_by_hand():
    from sdpo_kit.length import eval_length_columns, eval_length_summary

    table, scored, u = heldout_table()
    table = eval_length_columns(table, scored)
    assert table["log_length_ratio"].to_list() == pytest.approx((u * np.log(2)).tolist())  # lengths of S, the first
    assert table["gamma_avg_M1"].to_list() == [-0.5] * 10
    summary = eval_length_summary(table, ["S", "M1"])
    s, m = summary["models"]
    assert (s["accuracy_sum"], s["accuracy_avg"]) == (0.4, 0.4)
    assert (m["accuracy_sum"], m["accuracy_avg"]) == (1.0, 0.0)
    assert [q["accuracy_sum"] for q in s["quintiles"]] == [0.5, 0.5, 0.5, 0.0, 0.5]
    assert [q["accuracy_avg"] for q in s["quintiles"]] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert summary["bucket_edges"][0] == pytest.approx([-4 * np.log(2), -3 * np.log(2)])
    slope, intercept = np.polyfit(u * np.log(2), table["gamma_S"].to_numpy(), 1)
    assert (s["slope"], s["intercept"]) == (pytest.approx(slope), pytest.approx(intercept))
    assert m["rho_length"] is None  # a constant γ has no rank correlation


def test_report_has_the_length_figure_and_sentence(tmp_path):
    """A contract run (tests/test_report.py) plus eval.json "length", scores.parquet lengths and a
    manifest "length" record: the figure reads back the accuracies and the fitted line."""
    import json

    from test_report import write_contract_run

    from sdpo_kit.length import eval_length_columns, eval_length_summary
    from sdpo_kit.plots import axes_series  # noqa: F401 - figures.json is axes_series output
    from sdpo_kit.report.html import ReportConfig, write_report

    run = write_contract_run(tmp_path, steps=1)
    table, scored, u = heldout_table()
    table = eval_length_columns(table, scored)
    table.write_parquet(run / "eval" / "scores.parquet")
    ev = json.loads((run / "eval" / "eval.json").read_text())
    ev["models"] = [m for m in ev["models"] if m["name"] in ("S", "M1")]
    ev["length"] = eval_length_summary(table, ["S", "M1"])
    (run / "eval" / "eval.json").write_text(json.dumps(ev))
    manifest_path = tmp_path / "run_parts" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["length"] = {"key": "margin", "rho_key_length": -0.6, "rho_step_length": 0.5}
    manifest_path.write_text(json.dumps(manifest))

    write_report(ReportConfig([run], str(tmp_path / "report")))
    figs = json.loads((tmp_path / "report" / "figures.json").read_text())
    bars, quint, scatter = figs["run_length"]["axes"]
    assert [b["values"] for b in bars["bars"]] == [[0.4, 1.0], [0.4, 0.0]]
    s_line = next(ln for ln in quint["lines"] if ln["label"] == "S sum")
    assert s_line["y"] == [0.5, 0.5, 0.5, 0.0, 0.5]
    fit = next(ln for ln in scatter["lines"] if ln["label"].startswith("S fit"))
    slope = ev["length"]["models"][0]["slope"]
    assert (fit["y"][1] - fit["y"][0]) / (fit["x"][1] - fit["x"][0]) == pytest.approx(slope)
    assert len(scatter["points"]) == 2 and len(scatter["points"][0]["xy"]) == 10
    summary = (tmp_path / "report" / "summary.md").read_text()
    assert ("How much of the order is length: the partitions' ordering key `margin` has Spearman ρ -0.60 with "
            "ln(chosen/rejected tokens), so about 36% of its rank variance is the length ratio") in summary
    assert "| S | 0.4 | 0.4 |" in summary


def test_curate_score_prints_the_length_line_and_keys_the_cache_by_layout(tiny_model_dir, tmp_path):
    from sdpo_kit.cli import app
    from sdpo_kit.models import load_model
    from sdpo_kit.scoring.frame import SCORED_COLUMNS, SCORED_LAYOUT, ScoreConfig, provenance
    from sdpo_kit.scoring.cache import cache_key

    length_pairs().write_parquet(tmp_path / "pairs.parquet")
    res = CliRunner().invoke(app, ["curate", "score", str(tmp_path / "pairs.parquet"), "--model", str(tiny_model_dir),
                                   "--max-length", "64", "--out", str(tmp_path / "scored.parquet")])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("length:"))
    assert "ln(chosen/rejected tokens): margin " in line and "margin_per_token " in line and "margin_shared " in line
    scored = pl.read_parquet(tmp_path / "scored.parquet")
    assert set(SCORED_COLUMNS) <= set(scored.columns)
    # Pairs cached under an older column layout live under another key, so they are rescored, not served.
    meta = provenance(*load_model(tiny_model_dir), ScoreConfig(max_length=64))
    assert meta["scored_layout"] == SCORED_LAYOUT
    assert cache_key(meta) != cache_key({**meta, "scored_layout": SCORED_LAYOUT - 1})


def test_dataset_card_of_scored_pairs_records_the_length_line(tmp_path):
    from sdpo_kit.curate.card import CardConfig, write_dataset_card

    bad = write_dataset_card(CardConfig(str(write_scored(tmp_path / "bad.parquet", length_driven())), str(tmp_path / "bad")))
    text = bad.read_text()
    assert "- length: Spearman ρ with ln(chosen/rejected tokens): margin -0.9" in text
    assert "- warning: the order by `margin` is largely answer length" in text
    fine = write_dataset_card(CardConfig(str(write_scored(tmp_path / "ok.parquet", length_driven(independent=True))), str(tmp_path / "ok")))
    assert "- length: Spearman ρ" in fine.read_text() and "warning:" not in fine.read_text()


def test_kmeans_with_control_length_clusters_the_key_only():
    """On a length-driven set, k-means on the residual alone leaves the step index nearly free of length."""
    from sdpo_kit.length import spearman
    from sdpo_kit.curate.split import SplitConfig, split_frame

    frame = length_driven(300, independent=False).with_columns(
        (pl.col("margin") + pl.Series(np.random.default_rng(5).normal(0, 30, 300))).alias("margin"))
    ratio = dict(zip(frame["pair_id"], np.log(frame["chosen_tokens"] / frame["rejected_tokens"]).to_list()))
    for control, check in ((False, lambda rho: rho > 0.5), (True, lambda rho: abs(rho) <= 0.15)):
        parts, _ = split_frame(frame, SplitConfig(strategy="kmeans", steps=3, control_length=control))
        steps = [(t, ratio[p]) for t, part in enumerate(parts, 1) for p in part["pair_id"]]
        rho = spearman([t for t, _ in steps], [r for _, r in steps])
        assert check(rho), (control, rho)


def test_key_ranks_the_residual_within_length_ratio_bins():
    """On heavy-tailed margins the residual's ranks still lean on length; within-bin ranks do not,
    and they keep the residual's order inside every bin."""
    from sdpo_kit.length import length_bins, length_key, length_residual, log_length_ratio, spearman

    rng = np.random.default_rng(3)
    n = 600
    lc, lr = rng.uniform(2, 7, n), rng.uniform(2, 7, n)
    # Mean-zero skewed noise whose spread grows with the ratio: the fit removes the mean, but the
    # median of the residual still falls as the ratio grows, so its ranks lean on length.
    margin = -2 * (lc - lr) + np.exp(0.8 * (lc - lr)) * (rng.exponential(1, n) - 1)
    frame = scored_frame(np.exp(lc).round(), np.exp(lr).round(), margin)
    resid, _ = length_residual(frame, "margin")
    key, rec = length_key(frame, "margin", bins=20)
    ratio = log_length_ratio(frame)
    assert rec["bins"] == 20 and abs(rec["rho_length_after"]) <= 0.05 < abs(rec["rho_length_residual"])
    b = length_bins(ratio, 20)
    for j in range(20):
        m = b == j
        assert spearman(key[m], resid[m]) == pytest.approx(1.0)
    assert length_key(frame.head(50), "margin", bins=20)[1]["bins"] == 5  # at least 10 pairs a bin
