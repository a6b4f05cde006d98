"""`sdpo eval`: the summary numbers against naive loops, model selection, and a real run end to end.

    python -m pytest -q tests/test_eval.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from sdpo_kit.cli import app
from sdpo_kit.evaluate import EvalConfig, gamma_table, select_models, summarize


def _naive(gammas: dict[str, list[float]], sources: list[str], beta: float):
    """eval.json's numbers by plain Python loops over pairs."""
    models = {}
    for name, g in gammas.items():
        per = {}
        for src in sorted(set(sources)):
            vals = [v for v, s in zip(g, sources) if s == src]
            per[src] = (len(vals), sum(v > 0 for v in vals) / len(vals), sum(vals) / len(vals))
        models[name] = (len(g), sum(v > 0 for v in g) / len(g), sum(g) / len(g), per)
    comps = {}
    for name in list(gammas)[1:]:
        t = int(name[1:])
        for ref in {"S", f"M{t - 1}" if t > 1 else "S"}:
            rm = [beta * (p - r) for p, r in zip(gammas[name], gammas[ref])]
            comps[(name, ref)] = (sum(rm) / len(rm), sum(v > 0 for v in rm) / len(rm))
    return models, comps


def _table(n=57, names=("S", "M1", "M2", "M3"), seed=0):
    rng = np.random.default_rng(seed)
    sources = [["a", "b", "c"][i % 3] if i % 7 else "b" for i in range(n)]
    pairs = pl.DataFrame({"pair_id": [f"p{i}" for i in range(n)], "prompt": [[{"role": "user", "content": "x"}]] * n,
                          "source": sources, "judge_confidence": rng.uniform(size=n)})
    gammas = {m: (rng.normal(-1 + k, 2, n)).tolist() for k, m in enumerate(names)}
    scored = {m: pl.DataFrame({"pair_id": pairs["pair_id"], "margin": g}) for m, g in gammas.items()}
    return pairs, scored, gammas, sources


def test_summary_equals_naive_loops():
    pairs, scored, gammas, sources = _table()
    result = summarize(gamma_table(pairs, scored), list(gammas), beta=0.25)
    models, comps = _naive(gammas, sources, 0.25)
    for m in result["models"]:
        n, acc, mean, per = models[m["name"]]
        assert (m["pairs"], m["accuracy"]) == (n, pytest.approx(acc)) and m["mean_margin"] == pytest.approx(mean)
        assert m["sem"] == pytest.approx(np.std(gammas[m["name"]], ddof=1) / np.sqrt(n))
        assert {k: (v["pairs"], pytest.approx(v["accuracy"]), pytest.approx(v["mean_margin"]))
                for k, v in m["per_source"].items()} == per
    got = {(c["policy"], c["reference"]): (c["reward_margin_mean"], c["reward_accuracy"]) for c in result["comparisons"]}
    assert set(got) == set(comps)  # M1 vs S once; M2, M3 vs S and vs their previous model
    for key, (margin, acc) in comps.items():
        assert got[key] == (pytest.approx(margin), pytest.approx(acc))
    assert [(r["step"], r["reference"]) for r in result["reference_margins"]] == [(1, "S"), (2, "M1"), (3, "M2"), (4, "M3")]
    assert result["table"]["reward_margin_M3_vs_M2"].to_list() == pytest.approx(
        [0.25 * (a - b) for a, b in zip(gammas["M3"], gammas["M2"])])


def test_gamma_table_keeps_pairs_every_model_scored_and_scalar_columns():
    pairs, scored, gammas, _ = _table(n=10, names=("S", "M1"))
    scored["M1"] = scored["M1"].filter(pl.col("pair_id") != "p3")  # e.g. a prompt_too_long reject
    table = gamma_table(pairs, scored)
    assert table.height == 9 and "p3" not in table["pair_id"].to_list()
    assert table.columns == ["pair_id", "source", "judge_confidence", "gamma_S", "gamma_M1"]


def test_select_models():
    models = [{"name": n} for n in ("S", "M1", "M2", "M3")]
    assert [m["name"] for m in select_models(models, "all")] == ["S", "M1", "M2", "M3"]
    assert [m["name"] for m in select_models(models, "last")] == ["S", "M2", "M3"]
    assert [m["name"] for m in select_models(models, "M2, S")] == ["S", "M2"]
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['M9'\]"):
        select_models(models, "S,M9")


def test_config_names_the_bad_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run.json"):
        EvalConfig(run=str(tmp_path), data=str(tmp_path))
    (tmp_path / "run.json").write_text("{}")
    with pytest.raises(ValueError, match="--limit must be >= 1, got 0"):
        EvalConfig(run=str(tmp_path), data=str(tmp_path), limit=0)
    result = CliRunner().invoke(app, ["eval", "--run", str(tmp_path / "nope"), "--data", str(tmp_path)])
    assert result.exit_code == 2 and "no run.json" in result.output
