"""`sdpo train`: a thin layer over `sdpo_kit.train.run`.

    sdpo train --partitions parts/ --model default --out runs/demo --max_length 256
    sdpo train --fields          # every flag: StepwiseConfig + trl.DPOConfig
    sdpo train --partitions parts/ --out runs/demo --resume   # continues with the run's own settings
    accelerate launch --multi_gpu --num_processes 2 $(which sdpo) train ...   # gloo on CPU
"""

from __future__ import annotations

import os

import typer


def train(ctx: typer.Context) -> None:
    """Stepwise DPO from partitions: step t trains on partition t with M_{t-1} as reference and start.

    Flags: --partitions DIR --out RUN_DIR [--model default] [--mode stepwise|dpo]
    [--order shuffled|sequential] [--reference-schedule stepwise|fixed|mix] [--ref-mix-alpha A]
    [--lora_r R ...] [--resume] [--config run.yaml], plus any
    trl.DPOConfig field (--beta, --learning_rate, --max_length, --report_to, ...).
    `sdpo train --fields` lists them all. `--resume` restores the run's own settings; a changed
    --partitions, --model or training setting is refused (train into a new --out instead).
    Data-parallel on CPU (gloo): `accelerate launch --multi_gpu --num_processes 2 $(which sdpo) train ...`.
    Bad flags, YAML or inputs raise `sdpo_kit.errors` errors, answered in one line by the CLI boundary.
    """
    from sdpo_kit.train.config import given_keys, parse_train_args, train_parser
    from sdpo_kit.train.run import train_stepwise

    argv = list(ctx.args)
    if "--fields" in argv:
        typer.echo(train_parser().format_help())
        return
    cfg, args, overrides = parse_train_args(argv)
    run_dir = train_stepwise(cfg, args, overrides, given=given_keys(argv))
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"run: {run_dir}  (run.json, config.yaml, step_*/model, step_*/summary.json)")
