"""`sdpo train`: stepwise DPO over a partitions folder (or plain DPO with `--mode dpo`).

    sdpo train --config configs/train_cpu.yaml --partitions parts/ --out runs/sdpo --mode stepwise

Flags are the `StepwiseConfig` fields plus every `trl.DPOConfig` field (`sdpo train -h`); the
engine is `sdpo_kit/training/` (config, the run loop, one step, reference schedules).
"""

from __future__ import annotations

from pathlib import Path

from sdpo_kit.training.config import (StepwiseConfig, trl_overrides, default_dpo_config, parse,  # noqa: F401  (parse: tests)
                                      prepare)
from sdpo_kit.training.loop import train_stepwise


def run(cfg: StepwiseConfig, args=None, given: set[str] | None = None) -> Path:
    """`sdpo train`: every step into `cfg.out`; returns the run folder.

    `args`: the `trl.DPOConfig` (None: `sdpo train`'s defaults, as with no TRL flag); `given`: the
    settings the command line set (the CLI passes them; None: those differing from the defaults),
    which keep the partitions' max_length unless set and guard `--resume`.
    """
    import os

    if args is None:
        args = default_dpo_config(cfg)
    # Without the command line's record, a TRL setting that differs from our defaults counts as set.
    overrides = prepare(cfg, args, set(given) if given is not None else set(trl_overrides(args)))
    run_dir = train_stepwise(cfg, args, overrides, given=given)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run: {run_dir}  (run.json, config.yaml, step_*/model, step_*/summary.json)")
    return run_dir
