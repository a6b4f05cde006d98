"""torch's CPU attention, fp32 against bf16, forward + backward: why `sdpo_kit.attention` runs it in fp32.

    python benchmarks/attention.py                      # the default model's shapes: 8 rows x 192 tokens
    python benchmarks/attention.py --rows 4 --length 512

The default model's attention (9 query heads, 3 key/value heads, head dim 64, causal) through
transformers' SDPA function, for all 30 layers' worth of calls: plain fp32, autocast bf16 as torch
runs it (its bf16 flash kernel), and `cpu_sdpa` under the same autocast (fp32 inside). Prints
seconds per 30 layers and the max error of each against a float64 oracle.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from sdpo_kit.attention import cpu_sdpa

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--length", type=int, default=192)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()

    class Module:
        num_key_value_groups, is_causal = 3, True

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(a.rows, 9, a.length, 64, generator=gen)
    k, v = (torch.randn(a.rows, 3, a.length, 64, generator=gen) for _ in range(2))
    k64, v64 = (x.double().repeat_interleave(3, 1) for x in (k, v))
    scores = q.double() @ k64.transpose(-1, -2) / 8.0
    scores = scores.masked_fill(~torch.ones(a.length, a.length, dtype=torch.bool).tril(), float("-inf"))
    oracle = (scores.softmax(-1) @ v64).transpose(1, 2)

    def run(fn, dtype, autocast):
        qq, kk, vv = (x.to(dtype).requires_grad_() for x in (q, k, v))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, _ = fn(Module(), qq, kk, vv, None)
        out.float().sum().backward()
        return out

    for name, fn, dtype, autocast in [("fp32", sdpa_attention_forward, torch.float32, False),
                                      ("bf16 (torch under autocast)", sdpa_attention_forward, torch.bfloat16, True),
                                      ("cpu_sdpa under autocast", cpu_sdpa, torch.bfloat16, True)]:
        out = run(fn, dtype, autocast)
        began = time.perf_counter()
        for _ in range(a.repeats):
            run(fn, dtype, autocast)
        seconds = (time.perf_counter() - began) / a.repeats * 30
        print(f"{name:30s} {seconds:.3f} s per 30 layers, forward + backward; "
              f"max |error| {(out.double() - oracle).abs().max():.2e}")


if __name__ == "__main__":
    main()
