"""Less padded compute per DPO batch: the fused head over completion tokens only, `--trim_padding`, length-grouped batches.

    python -m pytest -q tests/test_padding.py -k trim

TRL's collator pads the chosen and the rejected rows of a batch (2B rows, right padding) to the
longest of all of them, and AlpacaEval answers differ 2-4x in length, so a large share of every
forward is padding. Under causal attention with right padding a real token sees only earlier real
tokens, so cutting a row's trailing pads changes no number beyond float rounding. `trim_forward`
wraps the fused-LM-head forward TRL patches onto the policy (`trl.trainer.utils.add_fused_lm_head`):
the rows are sorted by real length and run in `groups` forwards, each cut to its own longest row;
the per-token outputs are padded back with zeros (what TRL's head writes where the label is -100)
and put back in row order. Anything else (no attention mask, positional arguments, MoE router
logits, left padding) runs the original forward unchanged.
"""

from __future__ import annotations

import functools


def pair_widths(scored, max_length: int | None):
    """Each pair's width in a TRL batch (prompt + the longer completion, at most `max_length`) from the
    scorer's token counts; None without them. `to_dataset` stores it for the length-grouped samplers."""
    import polars as pl

    if not {"prompt_tokens", "chosen_tokens", "rejected_tokens"} <= set(scored.columns):
        return None
    width = scored["prompt_tokens"] + scored.select(pl.max_horizontal("chosen_tokens", "rejected_tokens")).to_series()
    return width if max_length is None else width.clip(upper_bound=max_length)


def with_lengths(trainer, train_dataset):
    """The dataset transformers' `_get_train_sampler` should read: it is handed the rows with TRL's unused
    columns already dropped (the length column among them); `trainer.train_dataset` holds the same rows, in
    the same order, with it, which `--train_sampling_strategy group_by_length` needs."""
    name, full = trainer.args.length_column_name, trainer.train_dataset
    if (train_dataset is not None and name not in train_dataset.column_names and full is not None
            and name in full.column_names and len(train_dataset) == len(full)):
        return full
    return train_dataset


def compact_head(model) -> None:
    """Wrap `model`'s TRL fused-LM-head forward so that its head projects only the scored positions.

    TRL 1.16's fused head (`add_fused_lm_head`) scores only positions whose label is not -100 where
    Triton runs (CUDA/XPU), and every position elsewhere, so that compiled backends (Neuron) see fixed
    tile shapes. On CPU that runs the head, its fp32 log-sum-exp fold and its backward over the prompt
    and padding positions too: on the default model at 192 tokens the head was ~47 % of a bf16 step.
    Eager CPU torch has no shapes to keep fixed, so the forward is run with TRL's own compact branch
    (`trl.trainer.utils._use_triton` read as True for that one call; the fold itself still runs TRL's
    torch code, `trl.kernels.chunked_logprob._use_triton` is untouched). The scored rows are the same
    rows, so the log-probs are the same up to matmul rounding (tests/test_padding.py). On CPU the head
    itself is `cpu_head.CPU_HEAD`, TRL's outputs in fewer passes (tests/test_cpu_head.py)."""
    import contextlib

    import trl.trainer.utils as trl_utils

    if not hasattr(trl_utils, "_use_triton"):  # another TRL: its own choice stands
        return
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    original = inner.forward

    from sdpo_kit.training.cpu_head import CPU_HEAD

    swap_head = hasattr(trl_utils, "_ChunkedLogProbFunction")

    @contextlib.contextmanager
    def compact():
        saved = trl_utils._use_triton, getattr(trl_utils, "_ChunkedLogProbFunction", None)
        trl_utils._use_triton = lambda device: True
        if swap_head:  # CPU_HEAD calls TRL's own function off CPU
            trl_utils._ChunkedLogProbFunction = CPU_HEAD
        try:
            yield
        finally:
            trl_utils._use_triton = saved[0]
            if swap_head:
                trl_utils._ChunkedLogProbFunction = saved[1]

    @functools.wraps(original)
    def forward(*args, fused_lm_head=False, **kwargs):
        if not fused_lm_head:
            return original(*args, **kwargs)
        with compact():
            return original(*args, fused_lm_head=True, **kwargs)

    inner.forward = forward


def trim_forward(model, groups: int | None = 2) -> None:
    """Wrap `model`'s TRL fused-LM-head forward (the PEFT base model's, under LoRA) in place.

    `groups`: the rows run in that many forwards of similar length; None: one forward per distinct row
    length, so no row is padded at all. The trainer uses None under bf16/fp16 autocast, where a row's
    numbers depend on its width: run at its own width, as the scorer runs it (`ScoreConfig.plan_options`),
    the policy's first forward gives its reference's log-probs."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    original = inner.forward

    @functools.wraps(original)
    def forward(*args, fused_lm_head=False, **kwargs):
        mask = kwargs.get("attention_mask")
        if (not fused_lm_head or args or mask is None or kwargs.get("input_ids") is None
                or kwargs.get("output_router_logits") or not _right_padded(mask)):
            return original(*args, fused_lm_head=fused_lm_head, **kwargs)
        return _grouped(original, kwargs, mask, groups)

    inner.forward = forward


def _right_padded(mask) -> bool:
    """Every row is ones then zeros (TRL's collator pads on the right)."""
    lengths = mask.sum(1, keepdim=True)
    import torch

    return bool((mask == (torch.arange(mask.shape[1], device=mask.device)[None] < lengths)).all())


def _grouped(original, kwargs: dict, mask, groups: int):
    """The forward in `groups` runs of rows of similar length, outputs back at full width and in row order."""
    import torch

    n, width = mask.shape
    lengths = mask.sum(1)
    order = torch.argsort(lengths, descending=True, stable=True)
    if groups is None:  # one group per distinct length
        runs = torch.unique_consecutive(lengths[order], return_counts=True)[1].tolist()
    else:
        size = -(-n // groups)
        runs = [min(size, n - i) for i in range(0, n, size)]
    outs = []
    for idx in order.split(runs):
        w = max(int(lengths[idx].max()), 2)  # the fused head scores positions 1..w-1: keep at least one
        sub = {k: (v[idx, :w] if torch.is_tensor(v) and v.shape[:2] == (n, width) else v) for k, v in kwargs.items()}
        outs.append(original(fused_lm_head=True, **sub))
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(n, device=order.device)
    first = outs[0]
    fields = {}
    for key, value in first.items():
        if torch.is_tensor(value) and value.dim() == 2:  # per-token (rows, w - 1): zero beyond each group's width
            parts = [torch.cat([o[key], o[key].new_zeros(o[key].shape[0], width - 1 - o[key].shape[1])], 1)
                     for o in outs]
            fields[key] = torch.cat(parts)[inverse]
        else:
            fields[key] = value
    log_probs, label_mask = fields["log_probs"], fields.get("label_mask")
    count = label_mask.sum() if label_mask is not None else (kwargs["labels"][:, 1:] != -100).sum()
    fields["loss"] = -log_probs.sum() / count.clamp(min=1)  # the head's own loss over the whole batch
    return type(first)(**fields)
