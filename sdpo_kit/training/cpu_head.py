"""TRL's fused LM head on CPU in fewer passes: the same per-token outputs and gradients, native fused ops.

    python -m pytest -q tests/test_cpu_head.py

TRL 1.16's `ChunkedLogProbFunction` projects the hidden states onto the vocabulary in tiles and folds
each tile into online log-sum-exp statistics. On CUDA the fold is one Triton kernel; on CPU it is a
dozen separate fp32 torch ops per tile (upcast, two scale multiplies, max, exp, sums, a masked
argmax, ...), and its backward upcasts the bf16 tile and the head's weight to run the two gradient
matmuls in fp32. On the default model that fold was the largest item of a bf16 training step.

`CPU_HEAD.apply` takes TRL's arguments and returns TRL's outputs. On CPU without a logit soft-cap it
projects a whole token block onto the whole vocabulary at once (one matmul in the autocast dtype,
like TRL's), then:
- forward: `logsumexp` and `gather` give the log-probs (the scorer's formula, so a bf16 policy's first
  forward gives its reference's numbers); entropy, mean logit and top-1 only when asked, each one
  more pass (`exp` and a batched dot, `sum`, `argmax`). The probabilities p = exp(z - log Z) are
  kept for the backward, in the matmul dtype (bf16 under autocast), up to `KEEP_BYTES` per call;
- backward: d log p_target / dz = onehot - p, built in place on the kept p (one multiply, one
  scatter; the target's 1 - p from its fp32 log-prob, which a bf16 p near 1 would lose) or, past
  `KEEP_BYTES`, recomputed from the saved log-normaliser; then the two gradient matmuls in the
  autocast dtype (bf16 at 2x the fp32 rate on this CPU), each rounded once, accumulated in fp32
  across token blocks. Keeping p saves the second projection onto the vocabulary and its fold (a
  default-model fp32 step at 192 tokens x batch 4 went from 8.2 to 7.5 s).
In fp32 the outputs and gradients equal TRL's to float rounding (kept or recomputed, bit for bit the
same); under bf16 the forward outputs do too, and the gradients carry one bf16 rounding (~0.3 % of
the largest element), as an autocast `nn.Linear` head's would, two with a kept bf16 p.
tests/test_cpu_head.py checks both against TRL's function.
Anywhere else (CUDA, XPU, soft-capped logits) it calls TRL's own function. `compact_head`
(`padding.py`) installs it for the trainer's fused forward only.
"""

from __future__ import annotations

import torch

TOKEN_ROWS = 2048  # tokens per block: [2048, 49152] fp32 logits are 0.4 GB
KEEP_BYTES = 2**29  # a call keeps its probabilities for the backward up to this size: 5,400 bf16 tokens x 49,152


def _compute_dtype(device) -> torch.dtype | None:
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def _logits(hidden, weight, bias, dtype, scale: float):
    """fp32 [n, V] logits of one token block: the matmul in `dtype` (TRL rounds the tile the same way);
    `weight` is already in `dtype`."""
    tile = torch.mm(hidden.to(dtype), weight.t())
    if bias is not None:
        tile += bias.to(dtype)
    z = tile if tile.dtype == torch.float32 else tile.float()
    if scale != 1.0:
        z.mul_(scale)
    return z


def _fold(z, t, vocab, rows, logprobs, log_z, entropy, sq, mean, top1, keep: bool):
    """Write one block's per-token outputs (rows `rows`) from its fp32 logits z [n, V] and targets t [n];
    return its probabilities p [n, V] when `keep` or the entropy needs them, else None.

    log p = z_t - logsumexp(z), the scorer's formula (`scoring/logps.py`): under autocast the policy's
    first forward then gives its reference's numbers. (torch's CPU log_softmax is faster but off by up
    to 9e-6 per token, with a bias: 4e-4 nats over 500 tokens.)"""
    lz = torch.logsumexp(z, -1)
    log_z[rows] = lz
    logprobs[rows] = z.gather(1, t[:, None])[:, 0] - lz
    if mean is not None:
        mean[rows] = z.sum(-1) / vocab
    if top1 is not None:  # argmax returns the first maximum: TRL's tie rule
        top1[rows] = z.argmax(-1) == t
    if sq is not None:  # log sum p^2 = logsumexp(2z) - 2 log Z
        sq[rows] = torch.logsumexp(2 * z, -1) - 2 * lz
    p = (z - lz[:, None]).exp_() if keep or entropy is not None else None  # the backward's p, too
    if entropy is not None:  # H = log Z - sum p z
        entropy[rows] = lz - torch.bmm(p[:, None, :], z[:, :, None])[:, 0, 0]
    return p


class _CpuLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, scale, outputs):
        # hidden [N, H], weight [V, H], bias [V] or None, targets [N] in [0, V): per-token tensors of shape [N]
        ctx.set_materialize_grads(False)
        dtype = _compute_dtype(hidden.device) or hidden.dtype
        n_tok, vocab = hidden.shape[0], weight.shape[0]
        logprobs = hidden.new_empty(n_tok, dtype=torch.float32)
        log_z = torch.empty_like(logprobs)
        entropy = torch.empty_like(logprobs) if "entropy" in outputs else None
        sq = torch.empty_like(logprobs) if "log_sum_sq_probs" in outputs else None
        mean = torch.empty_like(logprobs) if "mean_logits" in outputs else None
        top1 = torch.empty(n_tok, dtype=torch.bool, device=hidden.device) if "is_top1" in outputs else None
        # Keep the probabilities for the backward (in the matmul dtype: bf16 under autocast) when they fit:
        # it then skips a second projection onto the vocabulary and its fp32 fold.
        keep = any(ctx.needs_input_grad[:3]) and n_tok * vocab * dtype.itemsize <= KEEP_BYTES
        kept = []
        w = weight.to(dtype)
        for s in range(0, n_tok, TOKEN_ROWS):
            e = min(s + TOKEN_ROWS, n_tok)
            z = _logits(hidden[s:e], w, bias, dtype, scale)
            with torch.autocast(hidden.device.type, enabled=False):  # everything after the matmul in fp32
                p = _fold(z, targets[s:e], vocab, slice(s, e), logprobs, log_z, entropy, sq, mean, top1, keep)
            del z
            if keep:
                kept.append(p.to(dtype))
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, entropy)
        ctx.scale, ctx.dtype = scale, dtype
        ctx.cast = w if w is not weight else None  # the bf16 weight, for the backward: not cast twice
        ctx.kept = kept if keep else None
        ctx.logprobs = logprobs.clone() if keep and dtype != torch.float32 else None  # a copy: callers may edit theirs
        ctx.mark_non_differentiable(*(x for x in (sq, mean, top1) if x is not None))
        return logprobs, entropy, sq, mean, top1

    @staticmethod
    def backward(ctx, g_lp, g_ent, *_):
        hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        if g_lp is None and g_ent is None:
            return None, None, None, None, None, None
        dtype, scale = ctx.dtype, ctx.scale
        kept, ctx.kept = (ctx.kept, None) if g_ent is None else (None, None)  # used once: a second backward recomputes
        # Accumulate in fp32 whatever the inputs, as TRL does (the weight's gradient from its first block on)
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32) if need_h else None
        grad_w = None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32) if need_b else None
        w = weight if ctx.cast is None else ctx.cast
        for i, s in enumerate(range(0, hidden.shape[0], TOKEN_ROWS)):
            e = min(s + TOKEN_ROWS, hidden.shape[0])
            h = hidden[s:e].to(dtype)
            g = None if g_lp is None else g_lp[s:e, None].float()
            if kept is not None and kept[i].dtype == torch.float32:  # the forward's p: the same numbers as below
                grad = kept[i].mul_(-g)  # dL/dz = g (onehot - p)
                grad.scatter_add_(1, targets[s:e, None], g)
            elif kept is not None:  # bf16 p scaled in place (a bf16 factor: mixed-dtype in-place ops are slow);
                grad = kept[i].mul_(-g.to(kept[i].dtype))  # the target's 1 - p in fp32: -expm1 of its log-prob
                grad.scatter_(1, targets[s:e, None], (g * -torch.expm1(ctx.logprobs[s:e, None])).to(grad.dtype))
            else:
                log_p = _logits(hidden[s:e], w, bias, dtype, scale).sub_(log_z[s:e, None])
                if g_ent is None:
                    grad = log_p.exp_()  # p, in place
                    grad.mul_(-g)
                else:  # dH/dz = -p (log p + H)
                    p = log_p.exp()
                    grad = p * (log_p + entropy[s:e, None]) * -g_ent[s:e, None].float()
                    if g_lp is not None:
                        grad.sub_(p * g)
                if g_lp is not None:
                    grad.scatter_add_(1, targets[s:e, None], g)
            if scale != 1.0:
                grad.mul_(scale)
            # Both gradient matmuls in the autocast dtype with fp32 accumulation inside, rounded once per
            # block: what a bf16 `nn.Linear` head does. TRL upcasts both operands to run them in fp32 because
            # it sums a rounded product per vocabulary chunk; here the whole vocabulary is one product.
            grad = grad.to(dtype)
            if grad_h is not None:
                grad_h[s:e] = torch.mm(grad, w)
            if need_w:  # the first block's product becomes the fp32 sum: no zero-filled [V, H] to add it to
                part = torch.mm(grad.t(), h)
                grad_w = part.float() if grad_w is None else grad_w.add_(part)
            if grad_b is not None:
                grad_b += grad.sum(0, dtype=torch.float32)
        if need_w and grad_w is None:  # no tokens
            grad_w = torch.zeros(weight.shape, dtype=torch.float32)
        return (None if grad_h is None else grad_h.to(hidden.dtype),
                None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


class CpuHead:
    """Drop-in for `trl.kernels.ChunkedLogProbFunction` (same `apply` arguments and outputs)."""

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
              logit_scale=1.0, outputs=("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")):
        if hidden.device.type != "cpu" or final_logit_softcapping is not None:
            from trl.kernels import ChunkedLogProbFunction

            return ChunkedLogProbFunction.apply(hidden, weight, bias, targets, temperature, chunk_size,
                                                final_logit_softcapping, logit_scale, outputs)
        return _CpuLogProb.apply(hidden, weight, bias, targets, float(logit_scale) / float(temperature), tuple(outputs))


CPU_HEAD = CpuHead()
