"""`sdpo curate split`: the issue's invariants on real pairs, in-process CLI, outputs on disk.

Two scored inputs, both built from the real AlpacaEval pairs (data/):
- `tiny_scored`: margins computed by `sdpo_kit.scoring.frame.score_frame` with the tiny model
  (genuine reference log-probs; skipped until the scorer module exists);
- `length_proxy`: no model; margin = 0.9 * (rejected_tokens - chosen_tokens) + 5 * judge_confidence,
  where tokens = chars // 4. This mimics what a summed log-prob margin mostly measures (each
  token costs about -0.9 nats), so the splitter sees a realistic, length-dominated spread.
Every invariant test runs on both.
"""

from __future__ import annotations

import hashlib
import json

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import shared
from sdpo_kit.cli import app
from sdpo_kit.io import read_parquet_metadata, write_parquet
from sdpo_kit.curate.split import SplitConfig, split_file, split_frame

STRATEGIES = ["by-source", "easy-to-hard", "hard-to-easy", "random", "kmeans"]


@pytest.fixture(scope="session")
def alpaca_pairs():
    """2,000 canonical AlpacaEval pairs (seeded sample over all five sources), via the data layer."""
    from sdpo_kit.data import load_pairs

    pairs = load_pairs(shared("alpaca_eval_pairs.parquet")).pairs
    return pairs.with_row_index("__i").sample(2000, seed=0).sort("__i").drop("__i")


def _content_chars(col: str) -> pl.Expr:
    return pl.col(col).list.eval(pl.element().struct.field("content").str.len_chars()).list.sum().cast(pl.Int64)


@pytest.fixture(scope="session")
def length_proxy(alpaca_pairs, tmp_path_factory):
    df = alpaca_pairs.with_columns(
        (_content_chars(c) // 4).alias(f"{c}_tokens") for c in ("prompt", "chosen", "rejected")
    ).with_columns(
        (0.9 * (pl.col("rejected_tokens") - pl.col("chosen_tokens")) + 5 * pl.col("judge_confidence")).alias("margin"),
        (pl.col("judge_confidence") - 0.5).alias("margin_per_token"),
        (pl.col("chosen_tokens") > 1024).alias("chosen_truncated"),
        (pl.col("rejected_tokens") > 1024).alias("rejected_truncated"),
    )
    path = tmp_path_factory.mktemp("proxy") / "length_proxy.parquet"
    write_parquet(path, df, metadata={"sdpo_kit.scorer": json.dumps({"model": "none: length proxy"})})
    return path


@pytest.fixture(scope="session")
def tiny_scored(alpaca_pairs, tiny_model_dir, tmp_path_factory):
    """60 real pairs (the 12 shortest of each source, so scoring takes seconds) scored by the tiny
    model through the real scorer."""
    import sdpo_kit.scoring.frame as score
    from sdpo_kit.models import load_model

    size = sum(_content_chars(c) for c in ("prompt", "chosen", "rejected"))
    pairs = alpaca_pairs.filter(size.rank("ordinal").over("source") <= 12)
    model, tok = load_model(str(tiny_model_dir))
    cfg = score.ScoreConfig(max_length=192)  # short enough that some answers get truncated
    scored, _ = score.score_frame(pairs, model, tok, cfg, progress=False)
    path = tmp_path_factory.mktemp("tiny") / "tiny_scored.parquet"
    write_parquet(path, scored, metadata={"sdpo_kit.scorer": json.dumps(score.provenance(model, tok, cfg))})
    return path


@pytest.fixture(params=["tiny_scored", "length_proxy"])
def scored(request):
    return request.getfixturevalue(request.param)


def _split(path, out, **kw):
    return split_file(path, out, SplitConfig(**kw))


def _steps(out, n):
    return [pl.read_parquet(out / f"step_{t}.parquet") for t in range(1, n + 1)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_pair_in_exactly_one_step_or_dropped(scored, tmp_path, strategy):
    m = _split(scored, tmp_path / "p", strategy=strategy, steps=3, drop_truncated=True, keep_easiest=0.8,
               min_margin=-2000.0)
    parts, dropped = _steps(tmp_path / "p", 3), pl.read_parquet(tmp_path / "p" / "dropped.parquet")
    ids = pl.concat([p.select("pair_id") for p in parts] + [dropped.select("pair_id")])["pair_id"]
    source_ids = pl.read_parquet(scored)["pair_id"]
    assert ids.len() == source_ids.len() and ids.n_unique() == ids.len()
    assert set(ids) == set(source_ids)
    assert dropped["drop_reason"].null_count() == 0 and dropped.height == m["dropped"]["pairs"]
    assert [p.height for p in parts] == [s["pairs"] for s in m["steps"]]
    # TRL-ready: the preference columns plus the scores, nothing of ours left behind.
    assert {"prompt", "chosen", "rejected", "source", "margin", "margin_per_token"} <= set(parts[0].columns)
    assert not {"__row", "step", "drop_reason"} & set(parts[0].columns)


@pytest.mark.parametrize("strategy", ["random", "kmeans", "easy-to-hard"])
def test_same_seed_gives_byte_identical_outputs(scored, tmp_path, strategy):
    kw = dict(strategy=strategy, steps=3, seed=7, drop_truncated=True)
    _split(scored, tmp_path / "a", **kw)
    _split(scored, tmp_path / "b", **kw)
    names = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert "step_1.parquet" in map(str, names) and "plots/margin_hist.png" in map(str, names)
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_other_seed_gives_other_random_partition(scored, tmp_path):
    _split(scored, tmp_path / "a", strategy="random", steps=2, seed=1)
    _split(scored, tmp_path / "b", strategy="random", steps=2, seed=2)
    a, b = (set(pl.read_parquet(tmp_path / d / "step_1.parquet")["pair_id"]) for d in "ab")
    assert a != b and len(a) == len(b)


@pytest.mark.parametrize("by", ["margin", "margin_per_token"])
def test_easy_to_hard_orders_buckets(scored, tmp_path, by):
    m = _split(scored, tmp_path / "p", strategy="easy-to-hard", steps=3, by=by)
    parts = _steps(tmp_path / "p", 3)
    means = [p[by].mean() for p in parts]
    assert means == sorted(means, reverse=True)
    if by == "margin":
        assert [s["mean_margin"] for s in m["steps"]] == sorted((s["mean_margin"] for s in m["steps"]), reverse=True)
    # Buckets, not just means: every pair of step t is at least as easy as every pair of step t+1.
    for easier, harder in zip(parts, parts[1:]):
        assert easier[by].min() >= harder[by].max()
    _split(scored, tmp_path / "h", strategy="hard-to-easy", steps=3, by=by)
    assert [p[by].mean() for p in _steps(tmp_path / "h", 3)] == sorted(means)


def test_fractions_set_step_sizes(scored, tmp_path):
    n = pl.read_parquet(scored).height
    m = _split(scored, tmp_path / "p", strategy="easy-to-hard", fractions=(0.5, 0.3, 0.2))
    sizes = [s["pairs"] for s in m["steps"]]
    assert sum(sizes) == n and all(abs(got - f * n) <= 1 for got, f in zip(sizes, (0.5, 0.3, 0.2)))


def test_by_source_orders_sources_by_reward_accuracy(scored, tmp_path):
    df = pl.read_parquet(scored)
    # Oracle: the paper's definition computed naively, one pair at a time.
    hits: dict[str, list[int]] = {}
    for source, margin in zip(df["source"].to_list(), df["margin"].to_list()):
        hits.setdefault(source, []).append(margin > 0)
    accuracy = {s: sum(h) / len(h) for s, h in hits.items()}
    m = _split(scored, tmp_path / "p", strategy="by-source")
    assert len(m["steps"]) == len(accuracy)
    order = [next(iter(s["sources"])) for s in m["steps"]]
    assert all(len(s["sources"]) == 1 for s in m["steps"])
    assert [accuracy[s] for s in order] == sorted(accuracy.values(), reverse=True)
    for s in m["steps"]:
        assert s["reward_accuracy"] == pytest.approx(accuracy[next(iter(s["sources"]))], abs=1e-6)
    # Fewer steps than sources: neighbours in that order share a step, the order is kept.
    m2 = _split(scored, tmp_path / "p2", strategy="by-source", steps=2)
    grouped = [list(s["sources"]) for s in m2["steps"]]
    assert sorted(grouped[0], key=order.index) + sorted(grouped[1], key=order.index) == order


@pytest.mark.parametrize("strategy", ["easy-to-hard", "random"])
def test_stratify_source_keeps_source_shares(scored, tmp_path, strategy):
    df = pl.read_parquet(scored)
    share = {s: n / df.height for s, n in df["source"].value_counts().iter_rows()}
    m = _split(scored, tmp_path / "p", strategy=strategy, fractions=(0.5, 0.3, 0.2), stratify="source")
    for step in m["steps"]:
        for source, frac in share.items():
            assert abs(step["sources"].get(source, 0) - frac * step["pairs"]) <= 1, (step, source)
    # Within a source the easy-to-hard order survives stratification.
    if strategy == "easy-to-hard":
        parts = _steps(tmp_path / "p", 3)
        for source in share:
            mins = [p.filter(pl.col("source") == source)["margin"] for p in parts]
            assert all(a.min() >= b.max() for a, b in zip(mins, mins[1:]))


def test_kmeans_clusters_ordered_by_mean_margin(scored, tmp_path):
    m = _split(scored, tmp_path / "p", strategy="kmeans", steps=3, seed=0)
    means = [s["mean_margin"] for s in m["steps"]]
    assert means == sorted(means, reverse=True) and all(s["pairs"] > 0 for s in m["steps"])


def test_filters_record_their_reasons(scored, tmp_path):
    df = pl.read_parquet(scored)
    cfg = SplitConfig(strategy="random", steps=2, drop_truncated=True, min_margin=-300.0, keep_easiest=0.5)
    parts, dropped = split_frame(df, cfg)
    truncated = df.filter(pl.col("chosen_truncated") | pl.col("rejected_truncated"))
    assert set(dropped.filter(pl.col("drop_reason") == "truncated")["pair_id"]) == set(truncated["pair_id"])
    low = dropped.filter(pl.col("drop_reason") == "below_min_margin")
    assert (low["margin"] < -300).all()
    survivors = df.height - truncated.height - low.height
    kept = pl.concat(parts)
    assert kept.height == round(0.5 * survivors)
    assert kept["margin"].min() >= dropped.filter(pl.col("drop_reason") == "not_easiest")["margin"].max()
    assert not (kept["chosen_truncated"] | kept["rejected_truncated"]).any() and kept["margin"].min() >= -300


def test_missing_scores_are_dropped_not_lost(length_proxy, tmp_path):
    df = pl.read_parquet(length_proxy)
    df = df.with_columns(pl.when(pl.int_range(pl.len()) % 10 == 0).then(None).otherwise(pl.col("margin")).alias("margin"))
    parts, dropped = split_frame(df, SplitConfig(strategy="easy-to-hard", steps=2))
    assert dropped.height == df["margin"].null_count() and set(dropped["drop_reason"]) == {"missing_score"}
    assert sum(p.height for p in parts) + dropped.height == df.height


def test_manifest_records_input_and_scorer(scored, tmp_path):
    m = _split(scored, tmp_path / "p", strategy="random", steps=2, seed=3)
    on_disk = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    assert m["input"]["sha256"] == hashlib.sha256(scored.read_bytes()).hexdigest()
    assert m["input"]["rows"] == pl.read_parquet(scored).height and m["seed"] == 3
    assert m["scorer"] == json.loads(read_parquet_metadata(scored)["sdpo_kit.scorer"])
    for s in m["steps"]:
        assert sum(s["sources"].values()) == s["pairs"]
    # Provenance travels with each step file, for the trainer.
    assert read_parquet_metadata(tmp_path / "p" / "step_1.parquet")["sdpo_kit.scorer"]


def test_card_parses_and_plots_are_pngs(length_proxy, tmp_path):
    from huggingface_hub import DatasetCard

    _split(length_proxy, tmp_path / "p", strategy="easy-to-hard", steps=3)
    card = DatasetCard.load(tmp_path / "p" / "README.md")
    splits = [f["split"] for f in card.data.to_dict()["configs"][0]["data_files"]]
    assert splits == ["step_1", "step_2", "step_3"]
    assert "| step | pairs | mean_margin" in card.text
    for name in ("margin_hist", "source_mix", "lengths"):
        png = tmp_path / "p" / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"plots/{name}.png" in card.text
        import matplotlib.image

        assert matplotlib.image.imread(png).shape[:2] == (400, 700)


def test_existing_dir_is_refused_unless_overwrite(length_proxy, tmp_path):
    out = tmp_path / "p"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--overwrite"):
        _split(length_proxy, out, strategy="random", steps=2)
    assert (out / "keep.txt").read_text() == "mine"
    split_file(length_proxy, out, SplitConfig(strategy="random", steps=2), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "step_2.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temp dirs left behind


def test_bad_config_and_input_errors(length_proxy, tmp_path):
    with pytest.raises(ValueError, match="fractions"):
        SplitConfig(fractions=(0.5, 0.4))
    with pytest.raises(ValueError, match="stratify"):
        SplitConfig(strategy="by-source", stratify="source")
    with pytest.raises(ValueError, match="strategy"):
        SplitConfig(strategy="hardest-first")
    unscored = tmp_path / "unscored.parquet"
    pl.read_parquet(length_proxy).drop("margin").write_parquet(unscored)
    with pytest.raises(ValueError, match=r"unscored.parquet: missing column\(s\) \['margin'\]"):
        _split(unscored, tmp_path / "p", strategy="random")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['chosen_truncated', 'rejected_truncated'\]"):
        pl.read_parquet(length_proxy).drop("chosen_truncated", "rejected_truncated").write_parquet(unscored)
        _split(unscored, tmp_path / "p", strategy="random", drop_truncated=True)
    with pytest.raises(ValueError, match="steps=9 but only 5 sources"):
        _split(length_proxy, tmp_path / "q", strategy="by-source", steps=9)


def test_cli_split_in_process(length_proxy, tmp_path):
    out = tmp_path / "parts"
    args = ["curate", "split", str(length_proxy), "--out", str(out), "--strategy", "easy-to-hard",
            "--fractions", "0.6,0.4", "--by", "margin_per_token", "--drop-truncated", "--stratify", "source"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "step 1:" in result.output and "step 2:" in result.output
    m = json.loads((out / "manifest.json").read_text())
    assert m["params"]["by"] == "margin_per_token" and m["params"]["fractions"] == [0.6, 0.4]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    bad = CliRunner().invoke(app, ["curate", "split", str(length_proxy), "--out", str(tmp_path / "x"),
                                   "--fractions", "0.5,oops"])
    assert bad.exit_code != 0 and "--fractions" in bad.output


def test_stratified_counts_is_a_controlled_rounding():
    """Margins exact and every cell within one pair of n_s * m_t / N, over many random tables."""
    import numpy as np

    from sdpo_kit.curate.strategies import step_sizes, stratified_counts

    rng = np.random.default_rng(0)
    for _ in range(500):
        per_source = {f"s{i}": int(n) for i, n in enumerate(rng.integers(1, 400, size=rng.integers(1, 9)))}
        total = sum(per_source.values())
        shares = rng.dirichlet(np.ones(rng.integers(1, 7)))
        sizes = step_sizes(total, tuple(shares))
        table = stratified_counts(per_source, sizes)
        assert {s: sum(k) for s, k in table.items()} == per_source
        assert [sum(col) for col in zip(*table.values())] == sizes
        for s, row in table.items():
            assert all(abs(k - per_source[s] * m / total) <= 1 for k, m in zip(row, sizes)), (per_source, sizes)
