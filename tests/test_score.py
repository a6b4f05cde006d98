"""The scorer against TRL 1.16's own reference pass, and its per-pair bookkeeping."""

from __future__ import annotations

import math

import polars as pl
import pytest

from sdpo_kit.scoring.logps import plan
from sdpo_kit.scoring.frame import ScoreConfig, score_frame, shard_bounds
from sdpo_kit.scoring.tokens import tokenize_pair, truncate

WORDS = "the cat sat on a warm mat while rain fell over quiet hills and old roads".split()


def text(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


def canonical(rows: list[tuple]) -> pl.DataFrame:
    """Canonical conversational pairs (docs/ARCHITECTURE.md) from (system|None, user, chosen, rejected)."""
    from sdpo_kit.data import pair_id

    out = []
    for system, user, chosen, rejected in rows:
        prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        c, r = [{"role": "assistant", "content": chosen}], [{"role": "assistant", "content": rejected}]
        out.append({"pair_id": pair_id(prompt, c, r), "prompt": prompt, "chosen": c, "rejected": r, "source": "t"})
    return pl.DataFrame(out)


def mixed_pairs() -> pl.DataFrame:
    """Short pairs, pairs past max_length=96, one whose prompt alone passes it, a shared answer opening."""
    rows = [(None, text(8, i), text(5 + 7 * i, i + 1), text(3 + 11 * (i % 3), i + 2)) for i in range(6)]
    rows.append(("You are terse.", text(20, 9), text(90, 10), text(4, 11)))  # chosen truncated
    rows.append((None, text(150, 12), "yes", "no"))  # prompt alone > 96 tokens
    # long common prefix: under keep_start at 96 both answers are cut to the same tokens (identical_truncated)
    rows.append((None, text(30, 13), text(40, 14) + " end", text(40, 14) + " stop"))
    rows.append((None, text(60, 15), text(70, 16), text(80, 17)))  # both truncated
    return canonical(rows)


def trl_reference(frame: pl.DataFrame, model_dir, tmp_path, max_length, truncation_mode) -> dict[str, tuple]:
    """pair_id -> (ref_chosen_logps, ref_rejected_logps) from TRL's precompute_ref_log_probs pass."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    args = DPOConfig(output_dir=str(tmp_path / "trl"), gradient_checkpointing=False, bf16=False, report_to=[],
                     use_cpu=True, precompute_ref_log_probs=True, max_length=max_length,
                     truncation_mode=truncation_mode, per_device_train_batch_size=3, dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(frame.to_dicts()))
    ds = trainer.train_dataset
    return {k: (c, r) for k, c, r in zip(ds["pair_id"], ds["ref_chosen_logps"], ds["ref_rejected_logps"])}


def close(ours: float, theirs: float, abs_tol: float = 1e-4) -> bool:
    return abs(ours - theirs) <= abs_tol + 1e-5 * abs(theirs)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from sdpo_kit.models import load_model

    return load_model(tiny_model_dir)


@pytest.mark.parametrize("mode,share", [("keep_start", 25), ("keep_end", 0)])  # shared-prefix KV / padded batches
def test_matches_trl_reference_pass(tiny, tiny_model_dir, tmp_path, mode, share):
    frame = mixed_pairs()
    expected = trl_reference(frame, tiny_model_dir, tmp_path, 96, mode)
    scored, rejects = score_frame(frame, *tiny, ScoreConfig(max_length=96, truncation_mode=mode, token_budget=120,
                                                            share_prefix=share),
                                  progress=False, file="mem")
    if mode == "keep_start":
        assert [(r.row, r.reason) for r in rejects] == [(8, "prompt_too_long"), (9, "identical_truncated")]
        same = frame["pair_id"][8]  # TRL keeps it, with equal sums: no preference left (issue 22 rejects it)
        assert expected[same][0] == expected[same][1]
        expected.pop(same)
    else:
        assert rejects == []
    assert sorted(scored["pair_id"]) == sorted(expected)  # TRL kept exactly the pairs we kept
    assert scored["chosen_truncated"].any() and scored["rejected_truncated"].any()
    for row in scored.iter_rows(named=True):
        c, r = expected[row["pair_id"]]
        assert close(row["ref_chosen_logps"], c), (row["pair_id"], row["ref_chosen_logps"], c)
        assert close(row["ref_rejected_logps"], r), (row["pair_id"], row["ref_rejected_logps"], r)


def test_columns_order_and_naive_oracle(tiny):
    """Input order kept; sums equal a plain full-logits forward of each sequence (no batching, no sharing)."""
    import torch

    model, tokenizer = tiny
    frame = mixed_pairs()
    config = ScoreConfig(max_length=96, token_budget=200)
    scored, rejects = score_frame(frame, model, tokenizer, config, progress=False)
    assert scored["pair_id"].to_list() == [p for i, p in enumerate(frame["pair_id"]) if i not in (7, 8)]
    assert [(r.row, r.reason) for r in rejects] == [(8, "prompt_too_long"), (9, "identical_truncated")]
    assert scored.columns[:5] == frame.columns
    assert scored["margin"].to_list() == pytest.approx((scored["ref_chosen_logps"] - scored["ref_rejected_logps"]).to_list())
    for row in scored.iter_rows(named=True):
        p, c, r = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        assert (row["prompt_tokens"], row["chosen_tokens"], row["rejected_tokens"]) == (len(p), len(c), len(r))
        for comp, col, flag in ((c, "ref_chosen_logps", "chosen_truncated"), (r, "ref_rejected_logps", "rejected_truncated")):
            seq = truncate(p, comp, 96, "keep_start")
            assert row[flag] == (len(p) + len(comp) > 96)
            with torch.inference_mode():
                logits = model(torch.tensor([seq.ids])).logits[0].log_softmax(-1)
            naive = sum(logits[t - 1, seq.ids[t]].item() for t in range(len(p), len(seq.ids)))
            assert close(row[col], naive, 1e-4), (col, row[col], naive)
            n = len(seq.ids) - len(p)
            assert row[col + "_mean"] == pytest.approx(row[col] / n)


def test_sharing_and_budget_do_not_change_numbers(tiny):
    frame = mixed_pairs()
    a, _ = score_frame(frame, *tiny, ScoreConfig(max_length=96, share_prefix=0, token_budget=1), progress=False)
    b, _ = score_frame(frame, *tiny, ScoreConfig(max_length=96, share_prefix=10, token_budget=10_000),
                       progress=False)
    for col in ("ref_chosen_logps", "ref_rejected_logps"):
        assert all(close(x, y, 1e-4) for x, y in zip(a[col], b[col]))


def test_policy_reward_margin(tiny, tiny_model_dir, tmp_path, smollm_tokenizer):
    from conftest import build_tiny_model

    from sdpo_kit.models import load_model

    policy, _ = load_model(build_tiny_model(tmp_path / "p", smollm_tokenizer, seed=1))
    frame = mixed_pairs()
    config = ScoreConfig(max_length=96, beta=0.5)
    scored, _ = score_frame(frame, *tiny, config, policy=policy, progress=False)
    alone, _ = score_frame(frame, policy, tiny[1], config, progress=False)
    assert scored["policy_chosen_logps"].to_list() == pytest.approx(alone["ref_chosen_logps"].to_list(), abs=1e-4)
    for row in scored.iter_rows(named=True):
        want = 0.5 * ((row["policy_chosen_logps"] - row["ref_chosen_logps"])
                      - (row["policy_rejected_logps"] - row["ref_rejected_logps"]))
        assert row["reward_margin"] == pytest.approx(want)
        assert row["reward_correct"] == (want > 0)


def test_standard_format_tokenisation_matches_trl(smollm_tokenizer):
    """Plain-string pairs: TRL appends EOS to completions and tokenises without a template."""
    p, c, r = tokenize_pair(smollm_tokenizer, "Q: sky?", " blue", " green" + smollm_tokenizer.eos_token)
    eos = smollm_tokenizer.eos_token_id
    assert c[-1] == eos and r[-1] == eos and r.count(eos) == 1
    assert p + c == smollm_tokenizer("Q: sky? blue" + smollm_tokenizer.eos_token)["input_ids"]


def test_helpers_and_config_validation():
    assert [shard_bounds(7, i, 3) for i in range(3)] == [(0, 3), (3, 5), (5, 7)]
    seq = truncate([1, 2, 3], [4, 5, 6], 4, "keep_end")
    assert (seq.ids, seq.start, list(seq.scored)) == ([3, 4, 5, 6], 1, [1, 2, 3])
    a, b, c = truncate([1, 2], [3, 4], None, "keep_start"), truncate([1, 2], [3, 5], None, "keep_start"), seq
    items = plan([(a, b), (a, c), (c, c)], budget=9, share_min=3)
    assert items[:2] == [("prefix", 0, 3), ("prefix", 2, 4)]  # (a, c) share 0 tokens: batched instead
    rows = [row for kind, row in items[2:]]
    assert sorted(seg for row in rows for seg, _ in row) == [2, 3]
    assert all(len(row) * len(row[0][1].ids) <= 9 or len(row) == 1 for row in rows)  # padding counts
    for bad in ({"truncation_mode": "middle"}, {"dtype": "float16"}, {"max_length": 1}, {"beta": 0},
                {"share_prefix": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ScoreConfig(**bad)
    assert not math.isnan(ScoreConfig().token_budget)


def _scaled_lm(kind: str):
    """A tiny random causal LM (vocab 101, hidden 16) whose forward scales or softcaps its logits itself."""
    import torch
    from transformers import AutoModelForCausalLM, CohereConfig, Gemma2Config, GraniteConfig

    torch.manual_seed(0)
    common = dict(vocab_size=101, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.5, pad_token_id=0)
    config = {"cohere_logit_scale": lambda: CohereConfig(logit_scale=3.0, **common),
              "gemma2_softcapping": lambda: Gemma2Config(final_logit_softcapping=2.0, head_dim=8, **common),
              "granite_logits_scaling": lambda: GraniteConfig(logits_scaling=0.25, **common)}[kind]()
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("kind", ["cohere_logit_scale", "gemma2_softcapping", "granite_logits_scaling"])
def test_logit_scale_and_softcapping_match_the_models_own_forward(kind):
    """`backbone_and_head`'s copy of TRL's `add_fused_lm_head` scale/softcap, per token, against a plain
    forward (`model(...).logits` -> log_softmax -> gather), through both scorer paths (batch, shared prefix)."""
    import torch

    from sdpo_kit.scoring.logps import Scorer, backbone_and_head
    from sdpo_kit.scoring.tokens import Sequence

    model = _scaled_lm(kind)
    _, _, scale, softcap = backbone_and_head(model)
    assert (scale, softcap) == {"cohere_logit_scale": (3.0, None), "gemma2_softcapping": (1.0, 2.0),
                                "granite_logits_scaling": (4.0, None)}[kind]
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(1, 101, (9,), generator=g).tolist()

    def seq(n: int) -> Sequence:  # the shared prefix + n random tokens; scored from position 3 on
        return Sequence(prefix + torch.randint(1, 101, (n,), generator=g).tolist(), 3, False)

    pairs = [(seq(7), seq(4)), (seq(2), seq(11))]
    for share_min in (None, 5):  # batched and padded / prefix once + tails on its KV cache
        scorer = Scorer(model, 2 * len(pairs), head_chunk=5)
        items = plan(pairs, budget=64, share_min=share_min)
        assert {kind for kind, *_ in items} == ({"batch"} if share_min is None else {"prefix"})
        with torch.inference_mode():
            for item in items:
                scorer.run(item, pairs)
            for seg, seq in enumerate(s for pair in pairs for s in pair):
                ours = torch.diff(scorer.prefix[seg], prepend=torch.zeros(1, dtype=torch.float64))
                logps = model(input_ids=torch.tensor([seq.ids])).logits[0].float().log_softmax(-1)
                naive = torch.tensor([logps[t - 1, seq.ids[t]].item() for t in seq.scored], dtype=torch.float64)
                # fp32 log-probs of up to ~30 nats: 1e-5 absolute plus 1e-6 relative (a dropped scale moves them by > 1e-2)
                assert len(ours) == len(naive) and torch.allclose(ours, naive, rtol=1e-6, atol=1e-5), (kind, seg, ours - naive)
    plain = Scorer(model, 2 * len(pairs))  # the check can fail: without the scale/softcap the numbers move
    plain.scale, plain.softcap = 1.0, None
    with torch.inference_mode():
        plain.run(("batch", [(0, pairs[0][0])]), pairs)
    assert (plain.sums[0] - scorer.sums[0]).abs() > 1e-2
