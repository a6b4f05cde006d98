"""Attention computed in float32 under CPU autocast: faster there than torch's bf16 kernel.

    python benchmarks/attention.py    # torch's CPU flash attention, fp32 against bf16, forward + backward

Under `torch.autocast("cpu", bfloat16)` torch casts q, k and v to bf16 for
`scaled_dot_product_attention`. On CPU its flash-attention kernel is *slower* in bf16 than in fp32
(`benchmarks/attention.py`, the default model's shapes, 8 rows x 192 tokens, 30 layers, forward +
backward on 2 cores: 0.72 s against 0.55 s; in a profiled training step 0.76 s against 0.61 s with
this module). So `load_model` gives CPU models `CPU_SDPA`: transformers' own SDPA attention, run
with autocast off on q, k, v in fp32 (q and k already are after the rotary embedding), its output
handed back in the autocast dtype as before. The projections around it still run in bf16. Anywhere
else (no autocast, another device) it is transformers' function unchanged, so float32 numbers do not
move. Training and scoring load their models the same way, so under `--bf16` the policy's first
forward and its reference's scores still run the same arithmetic (tests/test_bf16.py).
"""

from __future__ import annotations

CPU_SDPA = "sdpo_cpu_sdpa"  # the name models loaded for CPU use carry in `config._attn_implementation`


def cpu_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' `sdpa_attention_forward`, in float32 when CPU autocast would run it in bf16/fp16."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    device = query.device.type
    if device != "cpu" or not torch.is_autocast_enabled(device):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(device, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                              attention_mask, **kwargs)
    return out.to(torch.get_autocast_dtype(device)), weights


def use_cpu_sdpa(model) -> bool:
    """Give `model` `cpu_sdpa` where it runs transformers' SDPA attention; True when it did."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(CPU_SDPA, cpu_sdpa)
    # SDPA's masks too: transformers builds no mask at all for an attention name it has no mask function for
    # (padding and a shared prefix's KV cache would be ignored)
    ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_SDPA, sdpa_mask)
    model.set_attn_implementation(CPU_SDPA)
    return True
