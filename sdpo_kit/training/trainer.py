"""The TRL side of a step: the dataset with the scorer's reference columns, and the `DPOTrainer` that reads them.

    python -m pytest -q tests/test_train.py -k exact_reference

TRL 1.16 always runs its precompute pass when `precompute_ref_log_probs=True` (and fails on a
dataset that already has `ref_*` columns), so the scorer's values travel in `sdpo_ref_*` columns
(`CARRIED`) and the one public hook TRL calls per batch in that pass, `compute_ref_log_probs`,
returns them instead of running a forward pass. No private method of TRL is overridden.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpo_kit.training.padding import pair_widths, with_lengths

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
CARRIED = {c: f"sdpo_{c}" for c in REF_COLUMNS}  # scorer column -> dataset column TRL leaves alone


def to_dataset(scored, folder: Path, state, length_column: str = "length", max_length: int | None = None):
    """A file-backed `datasets.Dataset` of TRL-conversational pairs plus the scorer's `sdpo_ref_*`.

    Where the scorer's token counts are present, `length_column` holds each pair's padded width in a
    batch (prompt + the longer completion, at most `max_length`): transformers' length-grouped
    samplers (`--train_sampling_strategy group_by_length`) read it, as TRL's rows carry no `input_ids`.

    File-backed on purpose: TRL's precompute pass hands its results from the main process to
    the others through a cache file beside the dataset, and an in-memory dataset puts that file
    in a per-process temporary folder the other processes cannot see.
    """
    from datasets import Dataset, load_from_disk

    if state.is_main_process:
        shutil.rmtree(folder, ignore_errors=True)  # stale TRL cache files belong to old fingerprints
        frame = scored.select(["prompt", "chosen", "rejected", *REF_COLUMNS]).rename(CARRIED)
        widths = pair_widths(scored, max_length)
        frame = frame if widths is None else frame.with_columns(widths.alias(length_column))
        Dataset.from_list(frame.to_dicts()).save_to_disk(str(folder))
    state.wait_for_everyone()
    return load_from_disk(str(folder))


@dataclass
class PrecomputedReferenceCollator:
    """TRL's `DataCollatorForPreference` that also hands on the scorer's reference log-probs.

    Output: TRL's batch (`input_ids`, `attention_mask`, `completion_mask`: (2B, L), chosen rows
    first) plus `ref_chosen_logps`, `ref_rejected_logps`: (B,) fp32, unless TRL's own columns
    already supplied them (after its precompute pass they are the same numbers).
    """

    base: Any  # trl.trainer.dpo_trainer.DataCollatorForPreference

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        carried = {src: [e[dst] for e in examples] for src, dst in CARRIED.items() if dst in examples[0]}
        batch = self.base([{k: v for k, v in e.items() if k not in CARRIED.values()} for e in examples])
        for name, values in carried.items():
            batch.setdefault(name, torch.tensor(values, dtype=torch.float32))
        return batch


def trainer_class():
    """`DPOTrainer` whose reference pass reads the log-probs already in the batch (imported lazily)."""
    from trl import DPOTrainer

    class PrecomputedReferenceDPOTrainer(DPOTrainer):
        def compute_ref_log_probs(self, model, inputs):
            # Public per-batch hook of TRL's precompute pass: the scorer already did this work.
            if "ref_chosen_logps" in inputs:
                device = self.accelerator.device
                return inputs["ref_chosen_logps"].to(device), inputs["ref_rejected_logps"].to(device)
            return super().compute_ref_log_probs(model, inputs)

        def _get_train_sampler(self, train_dataset=None):  # transformers' hook: see padding.with_lengths
            return super()._get_train_sampler(with_lengths(self, train_dataset))

    return PrecomputedReferenceDPOTrainer


def build_trainer(model, tokenizer, dataset, args, peft_config=None, trim: bool = False):
    """A fresh DPO trainer for one step; `args` must have `precompute_ref_log_probs=True`.

    `trim`: the policy's forward runs each batch in length groups without their padding (`padding.py`).
    Under bf16/fp16 autocast every row runs at its own width, whatever `trim`: the scorer scores the
    reference that way, and a row's autocast numbers depend on its width."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    assert args.precompute_ref_log_probs, "the step trainer reads precomputed reference log-probs"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # TRL mirrors the pad token onto the model only when it builds the collator itself.
    model.config.pad_token_id = tokenizer.pad_token_id
    base = DataCollatorForPreference(
        pad_token_id=tokenizer.pad_token_id,
        max_length=args.max_length,
        truncation_mode=args.truncation_mode,
        pad_to_multiple_of=args.pad_to_multiple_of,
    )
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=PrecomputedReferenceCollator(base),
        peft_config=peft_config,
    )
    # After TRL patched its fused LM head onto the model, before accelerate wraps the forward.
    from sdpo_kit.training.config import trainer_autocast
    from sdpo_kit.training.padding import compact_head, trim_forward

    compact_head(trainer.model)
    if trainer_autocast(args):
        trim_forward(trainer.model, groups=None)
    elif trim:
        trim_forward(trainer.model)
    return trainer


def latest_checkpoint(folder: Path) -> str | None:
    """The newest complete `checkpoint-N` under `folder` (a SIGKILL can leave a partial one)."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.split("-")[1]))) if done else None


def final_model(trainer):
    """The trained weights as a plain transformers model: LoRA adapters merged in."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    return model
