"""`sdpo_kit.attention`: float32 attention under CPU autocast, transformers' SDPA everywhere else.

The oracle is the naive float64 softmax(q k^T / sqrt(d) + mask) v on the same inputs.
"""

import json

import pytest
import torch

from sdpo_kit.attention import CPU_SDPA, cpu_sdpa
from sdpo_kit.models import load_model


class _Module:  # what transformers' SDPA reads from the attention module
    num_key_value_groups = 3
    is_causal = True


def _qkv(seed=0, batch=2, length=7):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 6, length, 16, generator=gen)
    k = torch.randn(batch, 2, length, 16, generator=gen)
    v = torch.randn(batch, 2, length, 16, generator=gen)
    return q, k, v


def _naive(q, k, v, mask=None):
    """float64 causal attention, GQA by repeating k and v; output (batch, length, heads, dim)."""
    q, k, v = (x.double() for x in (q, k, v))
    k, v = k.repeat_interleave(3, 1), v.repeat_interleave(3, 1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    n = q.shape[2]
    allowed = torch.ones(n, n, dtype=torch.bool).tril()
    if mask is not None:
        allowed = allowed & mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2)


def test_fp32_without_autocast_is_transformers_sdpa_bit_for_bit():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv()
    ours, _ = cpu_sdpa(_Module(), q, k, v, None)
    theirs, _ = sdpa_attention_forward(_Module(), q, k, v, None)
    assert torch.equal(ours, theirs)


def test_under_cpu_autocast_it_runs_in_fp32_and_hands_back_bf16():
    """bf16 inputs (what autocast's projections give) are attended to in fp32: the output is the
    float64 oracle's within fp32 rounding plus one bf16 rounding at the end, where torch's bf16
    kernel (autocast's own choice) is further off."""
    q, k, v = (x.bfloat16() for x in _qkv(seed=1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = cpu_sdpa(_Module(), q, k, v, None)
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        bf16, _ = sdpa_attention_forward(_Module(), q, k, v, None)
    oracle = _naive(q, k, v)
    assert ours.dtype == torch.bfloat16
    err = (ours.double() - oracle).abs().max()
    assert err <= 2 ** -8 * oracle.abs().max()  # one bf16 rounding of the output
    assert torch.equal(ours, oracle.to(torch.bfloat16)) or err <= (bf16.double() - oracle).abs().max()


def test_a_padded_row_attends_only_to_its_tokens(tiny_model_dir):
    """The model loaded for CPU carries CPU_SDPA, and transformers still builds SDPA's masks for it: a
    left-padded row gives its unpadded logits (with no mask function registered it would not)."""
    model, tok = load_model(tiny_model_dir)
    assert model.config._attn_implementation == CPU_SDPA
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    alone = model(input_ids=ids).logits[0]
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], 1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    for autocast in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(input_ids=padded, attention_mask=mask).logits[0, 3:].float()
            ref = model(input_ids=ids).logits[0].float() if autocast else alone
        assert torch.allclose(out, ref, atol=5e-2 if autocast else 1e-5), autocast


def test_the_attention_name_is_not_saved_with_the_model(tiny_model_dir, tmp_path):
    model, tok = load_model(tiny_model_dir)
    model.save_pretrained(tmp_path / "m")
    assert CPU_SDPA not in (tmp_path / "m" / "config.json").read_text()
    assert json.loads((tmp_path / "m" / "config.json").read_text()).get("_attn_implementation") is None


@pytest.mark.parametrize("name", ["eager"])
def test_other_attention_implementations_are_left_alone(tiny_model_dir, name):
    from transformers import AutoModelForCausalLM

    from sdpo_kit.attention import use_cpu_sdpa

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=name)
    assert not use_cpu_sdpa(model) and model.config._attn_implementation == name
