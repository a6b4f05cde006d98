"""Length-controlled difficulty (issue 12): scorer columns, the --control-length residual, the ρ warning.

    PYTHONPATH=$PWD python -m pytest -q tests/test_length.py
"""

from __future__ import annotations

import polars as pl
import pytest

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
    from sdpo_kit.score import ScoreConfig, score_frame
    from sdpo_kit.tokenize import tokenize_pair, truncate

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

    from sdpo_kit.logps import Scorer
    from sdpo_kit.score import shared_margins

    scorer = Scorer.__new__(Scorer)  # only the bookkeeping, no model
    tokens = [[-1.0, -2.0, -3.0], [-0.5, -0.5], [-4.0], []]
    scorer.counts = torch.tensor([len(t) for t in tokens])
    scorer.prefix = [torch.tensor(t, dtype=torch.float64).cumsum(0) for t in tokens]
    assert shared_margins(scorer, 2) == [pytest.approx(-2.0), None]
