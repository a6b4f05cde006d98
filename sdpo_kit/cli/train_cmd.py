"""`sdpo train`: a thin layer over `sdpo_kit.train`.

    sdpo train --partitions parts/ --model default --out runs/demo --max_length 256
    sdpo train --fields          # every flag: StepwiseConfig + trl.DPOConfig
    accelerate launch --multi_gpu --num_processes 2 $(which sdpo) train ...   # gloo on CPU
"""

from __future__ import annotations

import os

import typer


def train(ctx: typer.Context) -> None:
    """Stepwise DPO from partitions: step t trains on partition t with M_{t-1} as reference and start.

    Flags: --partitions DIR --out RUN_DIR [--model default] [--mode stepwise|dpo]
    [--order shuffled|sequential] [--lora_r R ...] [--resume] [--config run.yaml], plus any
    trl.DPOConfig field (--beta, --learning_rate, --max_length, --report_to, ...).
    `sdpo train --fields` lists them all. Data-parallel on CPU (gloo):
    `accelerate launch --multi_gpu --num_processes 2 $(which sdpo) train ...`.
    """
    from sdpo_kit.train import TrainInputError, parse_train_args, train_parser, train_stepwise

    argv = list(ctx.args)
    if "--fields" in argv:
        typer.echo(train_parser().format_help())
        return
    try:  # flags and YAML: any ValueError here is the user's
        cfg, args, overrides = parse_train_args(argv)
    except (ValueError, FileNotFoundError) as err:
        _fail(err)
    try:  # only input errors are reported plainly; a bug inside training keeps its traceback
        run_dir = train_stepwise(cfg, args, overrides)
    except (TrainInputError, FileNotFoundError, FileExistsError) as err:
        _fail(err)
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"run: {run_dir}  (run.json, config.yaml, step_*/model, step_*/summary.json)")


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(2) from err
