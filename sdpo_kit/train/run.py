"""`sdpo train`: stepwise DPO over a partitions folder (or plain DPO with `--mode dpo`).

    sdpo train --config configs/train_cpu.yaml --partitions parts/ --out runs/sdpo --mode stepwise

Flags are the `StepwiseConfig` fields plus every `trl.DPOConfig` field (`sdpo train -h`); the
engine is `sdpo_kit/training/` (config, the run loop, one step, reference schedules).
"""

from __future__ import annotations

from pathlib import Path

from sdpo_kit.training.config import StepwiseConfig, parse, prepare  # noqa: F401  (parse: TRL's fields beside ours)
from sdpo_kit.training.loop import train_stepwise


def run(cfg, args, given: set[str] | None = None) -> Path:
    """`sdpo train`: every step into `cfg.out`; `given` (the settings this command set) guards --resume."""
    import os

    given = set(given or ())
    overrides = prepare(cfg, args, given)
    run_dir = train_stepwise(cfg, args, overrides, given=given)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run: {run_dir}  (run.json, config.yaml, step_*/model, step_*/summary.json)")
    return run_dir
