"""Length-grouped batches in `sdpo train` (`--train_sampling_strategy group_by_length`).

    python -m pytest -q tests/test_padding.py

A DPO batch is (2B, L): chosen and rejected rows padded to the longest of the batch, so pairs of
similar width waste less compute. transformers' `LengthGroupedSampler` reads each row's width
from the dataset's `length` column, which `to_dataset` fills from the scorer's token counts.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sdpo_kit.cli import app
from test_train import FAST, write_partitions


def padding_and_order(strategy: str, tmp_path, tiny_model_dir):
    """(padding share, widths the collator built per pair, reference values in batch order) under `strategy`."""
    from accelerate import PartialState

    from sdpo_kit.models import load_model, model_fingerprint
    from sdpo_kit.training.config import parse_train_args, scorer_config
    from sdpo_kit.training.step import score_reference
    from sdpo_kit.training.trainer import build_trainer, to_dataset

    parts = write_partitions(tmp_path / "parts", steps=1, pairs=32)
    _, args, _ = parse_train_args(["--partitions", str(parts), "--out", "x", *FAST, "--max_length", "1024",
                                   "--per_device_train_batch_size", "2", "--train_sampling_strategy", strategy])
    args.output_dir = str(tmp_path / "o")
    model, tok = load_model(tiny_model_dir)
    scored = score_reference([parts / "step_1.parquet"], model, tok, scorer_config(args), model_fingerprint(model), tmp_path,
                             PartialState())
    dataset = to_dataset(scored, tmp_path / f"ds_{strategy}", PartialState(), args.length_column_name, args.max_length)
    trainer = build_trainer(model, tok, dataset, args)
    rows = trainer.train_dataset
    widths = [(rows[i]["length"], trainer.data_collator([rows[i]])["input_ids"].shape[1]) for i in range(len(rows))]
    real = padded = 0
    order = []
    for batch in trainer.get_train_dataloader():
        real, padded = real + int(batch["attention_mask"].sum()), padded + batch["attention_mask"].numel()
        order += batch["ref_chosen_logps"].tolist()
    return 1 - real / padded, widths, order


def test_grouped_batches_pad_less_and_see_every_pair_once(tmp_path, tiny_model_dir):
    grouped, widths, order = padding_and_order("group_by_length", tmp_path / "g", tiny_model_dir)
    shuffled, _, shuffled_order = padding_and_order("random", tmp_path / "r", tiny_model_dir)
    assert all(length == width for length, width in widths)  # the column is the collator's own width
    assert sorted(order) == sorted(shuffled_order) and len(order) == 32  # same pairs, each once
    # transformers groups within mega-batches of min(rows // (4 x batch), 50) batches: 32 pairs at batch 2
    # make mega-batches of 4 batches. Most of a DPO batch's padding is within pairs (chosen vs rejected).
    assert grouped < shuffled


def test_grouped_order_contradicts_sequential(tmp_path):
    parts = write_partitions(tmp_path / "parts", steps=1, pairs=2)
    result = CliRunner().invoke(app, ["train", "--partitions", str(parts), "--out", str(tmp_path / "r"), *FAST,
                                      "--order", "sequential", "--train_sampling_strategy", "group_by_length"])
    assert result.exit_code == 2 and "--order sequential" in result.output, result.output


@pytest.mark.slow
def test_grouped_run_trains_end_to_end(tmp_path, tiny_model_dir):
    parts = write_partitions(tmp_path / "parts", steps=1, pairs=6)
    result = CliRunner().invoke(app, ["train", "--partitions", str(parts), "--model", str(tiny_model_dir), "--out",
                                      str(tmp_path / "run"), *FAST, "--train_sampling_strategy", "group_by_length"])
    assert result.exit_code == 0, (result.output, result.exception)


def test_trimmed_forward_gives_the_padded_forwards_numbers_and_gradients(tmp_path, tiny_model_dir):
    """`--trim_padding`: TRL's fused forward on a real (2B, L) batch, run whole vs in trimmed length groups."""
    import torch
    from accelerate import PartialState

    from sdpo_kit.models import load_model, model_fingerprint
    from sdpo_kit.training.config import parse_train_args, scorer_config
    from sdpo_kit.training.padding import trim_forward
    from sdpo_kit.training.step import score_reference
    from sdpo_kit.training.trainer import build_trainer, to_dataset

    parts = write_partitions(tmp_path / "parts", steps=1, pairs=4)
    _, args, _ = parse_train_args(["--partitions", str(parts), "--out", "x", *FAST, "--max_length", "1024",
                                   "--per_device_train_batch_size", "4"])
    args.output_dir = str(tmp_path / "o")
    model, tok = load_model(tiny_model_dir)
    scored = score_reference([parts / "step_1.parquet"], model, tok, scorer_config(args), model_fingerprint(model), tmp_path,
                             PartialState())
    trainer = build_trainer(model, tok, to_dataset(scored, tmp_path / "ds", PartialState()), args)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    mask = batch["attention_mask"]
    assert mask.sum() < 0.9 * mask.numel()  # real pairs: a good share of the batch is padding

    def run():
        model.zero_grad()
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        out = trainer.model(input_ids=batch["input_ids"], attention_mask=mask, labels=labels, fused_lm_head=True,
                            use_cache=False)
        (out.log_probs.sum(1) * torch.linspace(-1, 1, mask.shape[0])).sum().backward()  # any loss of the sums
        return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    whole, grads = run()
    trim_forward(trainer.model)
    trimmed, trimmed_grads = run()
    for key in ("log_probs", "entropy", "mean_logits", "is_top1"):
        assert trimmed[key].shape == whole[key].shape
        assert torch.allclose(trimmed[key].float(), whole[key].float(), atol=1e-4), key
    assert torch.allclose(trimmed.loss, whole.loss, atol=1e-5)
    assert len(grads) == len(trimmed_grads)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(grads, trimmed_grads))


def test_compact_head_scores_only_labelled_positions_with_trls_numbers(tiny_model_dir):
    """`compact_head`: TRL's fused head on CPU projects every position; wrapped, only the labelled ones
    (the rows handed to its chunked kernel are counted), with the same per-token outputs and gradients,
    and log-probs equal to the naive log_softmax of the model's own logits."""
    import torch
    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from sdpo_kit.models import load_model
    from sdpo_kit.training.padding import compact_head

    model, _ = load_model(tiny_model_dir)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, 24), generator=gen)
    mask = (torch.arange(24)[None] < torch.tensor([[24], [20], [15], [9]])).long()
    labels = ids.masked_fill(torch.arange(24)[None] < 6, -100).masked_fill(mask == 0, -100)  # 6 prompt tokens
    from sdpo_kit.training.cpu_head import CPU_HEAD

    rows = []
    apply, cpu_apply = trl_utils._ChunkedLogProbFunction.apply, CPU_HEAD.apply

    def counting(hidden, *rest):  # TRL's head, or the CPU head compact_head installs for its call
        rows.append(hidden.shape[0])
        return (cpu_apply if trl_utils._ChunkedLogProbFunction is CPU_HEAD else apply)(hidden, *rest)

    def run():
        model.zero_grad()
        out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
        (out.log_probs.sum(1) * torch.linspace(-1, 1, 4)).sum().backward()
        return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    trl_utils._ChunkedLogProbFunction.apply = counting
    CPU_HEAD.apply = counting
    try:
        whole, grads = run()
        compact_head(model)
        compact, compact_grads = run()
    finally:
        trl_utils._ChunkedLogProbFunction.apply = apply
        del CPU_HEAD.apply
    scored = int((labels[:, 1:] != -100).sum())
    assert rows == [4 * 23, scored] and scored < 4 * 23 / 2
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored after the call
    assert trl_utils._ChunkedLogProbFunction is not CPU_HEAD
    for key in ("log_probs", "entropy", "mean_logits", "is_top1"):
        assert compact[key].shape == whole[key].shape
        assert torch.allclose(compact[key].float(), whole[key].float(), atol=1e-5), key
    assert all(torch.allclose(a, b, atol=1e-6, rtol=1e-5) for a, b in zip(grads, compact_grads))
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    naive = logits.log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])[..., 0]
    naive = naive.masked_fill(labels[:, 1:] == -100, 0)
    assert torch.allclose(compact.log_probs, naive, atol=1e-4)
