"""`cpu_head.CPU_HEAD` against TRL's `ChunkedLogProbFunction`: every output and gradient, fp32 and bf16.

The oracle is TRL's own function on the same inputs (and, for the log-probs, the naive
log_softmax of the full logits). Sizes are small; `TOKEN_ROWS` is lowered so that several token
blocks are accumulated.
"""

import pytest
import torch
from trl.kernels import ChunkedLogProbFunction

import sdpo_kit.training.cpu_head as cpu_head
from sdpo_kit.training.cpu_head import CPU_HEAD

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
N, V, H = 37, 300, 16


def _inputs(bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) * 0.5
    b = torch.randn(V, generator=gen) if bias else None
    targets = torch.randint(0, V, (N,), generator=gen)
    targets[3] = int((hidden[3] @ weight.t() + (0 if b is None else b)).argmax())  # one top-1 token for sure
    return hidden, weight, b, targets


def _run(fn, inputs, dtype, temperature, scale, entropy_grad: bool):
    hidden, weight, bias, targets = (x.clone().requires_grad_(x.is_floating_point()) if x is not None else None
                                     for x in inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = fn.apply(hidden, weight, bias, targets, temperature, 128, None, scale, OUTPUTS)
    g = torch.linspace(-1, 2, N)
    loss = (out[0] * g).sum() + (0.3 * out[1].sum() if entropy_grad else 0)
    loss.backward()
    grads = [hidden.grad, weight.grad] + ([bias.grad] if bias is not None else [])
    return out, grads


@pytest.mark.parametrize("keep", [True, False])  # the probabilities kept for the backward, or recomputed there
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_fp32_outputs_and_gradients_equal_trls(monkeypatch, bias, entropy_grad, keep):
    monkeypatch.setattr(cpu_head, "TOKEN_ROWS", 16)  # 3 token blocks
    monkeypatch.setattr(cpu_head, "KEEP_BYTES", cpu_head.KEEP_BYTES if keep else 0)
    inputs = _inputs(bias)
    ref, ref_grads = _run(ChunkedLogProbFunction, inputs, torch.float32, 0.7, 1.3, entropy_grad)
    ours, our_grads = _run(CPU_HEAD, inputs, torch.float32, 0.7, 1.3, entropy_grad)
    for name, a, b in zip(OUTPUTS, ref, ours):
        assert b is not None and b.shape == a.shape and b.dtype == a.dtype, name
        if a.dtype == torch.bool:
            assert torch.equal(a, b) and a.any(), name
        else:
            assert torch.allclose(a, b, atol=5e-5, rtol=1e-5), name  # entropy: log Z - E[z], ~20 - ~18
    oracle, oracle_grads = _naive64(inputs, 0.7, 1.3, entropy_grad)
    assert torch.allclose(ours[0].double(), oracle[0], atol=1e-5)
    assert torch.allclose(ours[1].double(), oracle[1], atol=5e-5)
    for a, b, o in zip(ref_grads, our_grads, oracle_grads):
        assert torch.allclose(a, b, atol=5e-5, rtol=1e-5)
        assert (b.double() - o).abs().max() <= 5e-6 * o.abs().max()  # TRL's own error is ~6e-7 of it


def _naive64(inputs, temperature, scale, entropy_grad):
    """Log-probs, entropy and the gradients of `_run`'s loss from the full float64 log_softmax."""
    hidden, weight, bias, targets = (x.double().requires_grad_() if x is not None and x.is_floating_point() else x
                                     for x in inputs)
    log_p = ((hidden @ weight.t() + (0 if bias is None else bias)) * scale / temperature).log_softmax(-1)
    lp, ent = log_p.gather(1, targets[:, None])[:, 0], -(log_p.exp() * log_p).sum(-1)
    ((lp * torch.linspace(-1, 2, N).double()).sum() + (0.3 * ent.sum() if entropy_grad else 0)).backward()
    grads = [hidden.grad, weight.grad] + ([bias.grad] if bias is not None else [])
    return (lp.detach(), ent.detach()), grads


@pytest.mark.parametrize("keep", [True, False])
def test_bf16_forward_equals_trls_and_gradients_are_one_bf16_rounding_off(monkeypatch, keep):
    """Under autocast both round the projection to bf16 the same way, so the forward agrees to fp32
    rounding; the gradients differ by one bf16 rounding of the two gradient matmuls (TRL runs them
    in fp32), far below their own size, and the direction is the same. Kept in bf16 for the backward,
    the probabilities add one more rounding."""
    monkeypatch.setattr(cpu_head, "KEEP_BYTES", cpu_head.KEEP_BYTES if keep else 0)
    inputs = _inputs(True, seed=1)
    ours, our_grads = _run(CPU_HEAD, inputs, torch.bfloat16, 1.0, 1.0, entropy_grad=not keep)
    ref, ref_grads = _run(ChunkedLogProbFunction, inputs, torch.bfloat16, 1.0, 1.0, entropy_grad=not keep)
    for name, a, b in zip(OUTPUTS, ref, ours):
        if a.dtype == torch.bool:
            assert torch.equal(a, b), name
        else:
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-5), name
    for a, b in zip(ref_grads, our_grads):
        assert (a - b).abs().max() <= 2 ** -7 * a.abs().max()
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.9999


def test_soft_capped_logits_and_other_devices_go_to_trl():
    """The CPU head does not implement soft-capping: those calls are TRL's, bit for bit."""
    hidden, weight, bias, targets = _inputs(False)
    a = ChunkedLogProbFunction.apply(hidden, weight, bias, targets, 1.0, 128, 30.0, 1.0, OUTPUTS)
    b = CPU_HEAD.apply(hidden, weight, bias, targets, 1.0, 128, 30.0, 1.0, OUTPUTS)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_only_the_requested_outputs_are_computed():
    hidden, weight, bias, targets = _inputs(False)
    out = CPU_HEAD.apply(hidden, weight, bias, targets, 1.0, 128, None, 1.0, ("log_probs",))
    assert out[0].shape == (N,) and all(x is None for x in out[1:])


def test_a_batch_without_labelled_tokens_gives_empty_outputs_and_zero_gradients():
    """TRL's compact head hands over zero rows when no position is labelled: still differentiable."""
    hidden = torch.zeros(0, H, requires_grad=True)
    weight = torch.randn(V, H, requires_grad=True)
    out = CPU_HEAD.apply(hidden, weight, None, torch.zeros(0, dtype=torch.long), 1.0, 128, None, 1.0, OUTPUTS)
    assert out[0].shape == (0,)
    out[0].sum().backward()
    assert hidden.grad.shape == (0, H) and not weight.grad.any()


def test_kept_probabilities_give_the_recomputed_gradients(monkeypatch):
    """fp32: the kept p are the backward's own exp(z - log Z), so the gradients are bit for bit those
    of the recomputing backward. bf16: within a bf16 rounding of them; a token the model is sure of
    (p -> 1) keeps its small 1 - p gradient, which a bf16 p of 1.0 would zero."""
    inputs = _inputs(True, seed=2)
    hidden, weight, bias, targets = inputs
    sure, t = 5, int(targets[5])  # a target with 1 - p ~ 1e-3, below bf16's spacing at 1 (2^-8)
    z = hidden[sure] @ weight.t() + bias
    others = torch.cat([z[:t], z[t + 1:]]).logsumexp(0)
    bias = bias.clone()
    bias[t] += others + torch.log(torch.tensor(1e3)) - z[t]
    inputs = hidden, weight, bias, targets
    for dtype in (torch.float32, torch.bfloat16):
        kept_out, kept = _run(CPU_HEAD, inputs, dtype, 1.0, 1.0, False)
        monkeypatch.setattr(cpu_head, "KEEP_BYTES", 0)
        redo_out, redo = _run(CPU_HEAD, inputs, dtype, 1.0, 1.0, False)
        monkeypatch.undo()
        assert all(torch.equal(a, b) for a, b in zip(kept_out[:2], redo_out[:2]))
        for a, b in zip(kept, redo):
            if dtype == torch.float32:
                assert torch.equal(a, b)
            else:
                assert (a - b).abs().max() <= 2 ** -7 * b.abs().max()
        assert 0.0 < -torch.expm1(kept_out[0][sure]) < 2 ** -8  # the sure token, as set up
        # its row of the hidden gradient: g (1 - p_t) w_t - g sum_v p_v w_v, both parts small and not lost
        assert (kept[0][sure] - redo[0][sure]).norm() <= 0.05 * redo[0][sure].norm()


def test_a_second_backward_recomputes_what_the_first_used_up():
    """retain_graph: the kept probabilities are consumed in place by the first backward; the second
    gives the same gradients from a recomputation."""
    hidden, weight, bias, targets = (x.clone().requires_grad_(x.is_floating_point()) if x is not None else None
                                     for x in _inputs(False, seed=3))
    out = CPU_HEAD.apply(hidden, weight, bias, targets, 1.0, 128, None, 1.0, ("log_probs",))
    loss = (out[0] * torch.linspace(-1, 2, N)).sum()
    first = torch.autograd.grad(loss, (hidden, weight), retain_graph=True)
    second = torch.autograd.grad(loss, (hidden, weight))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(first, second))
