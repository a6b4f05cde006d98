"""Stepwise DPO (sDPO): step t trains on partition t; M_{t-1} is both its reference and its start.

    sdpo train --partitions parts/ --model default --out runs/demo --max_length 256 --num_train_epochs 1

Flags are the `StepwiseConfig` fields below plus every `trl.DPOConfig` field (beta, learning_rate,
loss_type, max_length, report_to, ...); `--config run.yaml` supplies the same keys and flags
override it. Each step composes a fresh `trl.DPOTrainer` (see `sdpo_kit/train_step.py`) fed
with the reference log-probs that the curation scorer computed with M_{t-1}, so no reference
model is ever held in memory. The run directory layout is in docs/ARCHITECTURE.md ("Runs").
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sdpo_kit.io import read_json, write_json, write_text

MODES = ("stepwise", "dpo")
ORDERS = ("shuffled", "sequential")


class TrainInputError(ValueError):
    """Bad user input found while training (as opposed to a bug): the CLI prints it without a traceback."""


@dataclass
class StepwiseConfig:
    """Stepwise settings; the `trl.DPOConfig` fields travel beside it (see `parse_train_args`)."""

    partitions: str | None = field(
        default=None, metadata={"help": "Partitions folder from `sdpo curate split` (manifest.json, step_*.parquet)."}
    )
    model: str = field(default="default", metadata={"help": "SFT model S: `default` or a local model directory."})
    out: str | None = field(default=None, metadata={"help": "Run directory to create (or continue with --resume)."})
    mode: str = field(
        default="stepwise",
        metadata={"help": "`stepwise`: one DPO run per partition, reference = previous step. `dpo`: one run on "
                  "all partitions together, reference = S (the paper's baseline)."},
    )
    order: str = field(
        default="shuffled",
        metadata={"help": "Batch order inside a step: `shuffled` (TRL's default) or `sequential` (the "
                  "partition's row order, e.g. easy-to-hard)."},
    )
    lora_r: int = field(
        default=0, metadata={"help": "LoRA rank; 0 = full fine-tuning. Adapters are merged after each step."}
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names for LoRA, or `all-linear`."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue the run in --out: skip finished steps, resume the current one "
                                 "from its latest checkpoint."}
    )

    def __post_init__(self):
        if not self.partitions:
            raise ValueError("--partitions is required: the folder written by `sdpo curate split`.")
        if not self.out:
            raise ValueError("--out is required: the run directory, e.g. runs/NAME.")
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {MODES}, got {self.mode!r}.")
        if self.order not in ORDERS:
            raise ValueError(f"--order must be one of {ORDERS}, got {self.order!r}.")
        if self.lora_r < 0 or self.lora_alpha <= 0:
            raise ValueError(
                f"--lora_r must be >= 0 and --lora_alpha > 0, got r={self.lora_r}, alpha={self.lora_alpha}."
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")


def partition_files(folder: str | Path) -> list[Path]:
    """step_1..step_T files in step order: from manifest.json when present, else step_*.parquet."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"partitions folder {folder} does not exist (write it with `sdpo curate split`).")
    if (folder / "manifest.json").is_file():
        steps = sorted(read_json(folder / "manifest.json")["steps"], key=lambda s: s["step"])
        files = [folder / s["file"] for s in steps]
    else:
        files = sorted(folder.glob("step_*.parquet"), key=lambda p: int(p.stem.split("_")[1]))
    missing = [str(f) for f in files if not f.is_file()]
    if not files or missing:
        raise FileNotFoundError(f"{folder}: no partitions found, or missing files {missing}.")
    return files


def train_parser():
    import torch
    from trl import DPOConfig, TrlParser

    parser = TrlParser((StepwiseConfig, DPOConfig))
    defaults = {"output_dir": "unused", "logging_first_step": True, "save_total_limit": 1}
    if not torch.cuda.is_available():  # TRL's GPU defaults fail or crawl on CPU; flags/YAML still win
        # use_cpu also makes transformers pick accelerate's MULTI_CPU (gloo) state under a launcher.
        defaults.update(bf16=False, gradient_checkpointing=False, use_cpu=True)
    parser.set_defaults(**defaults)
    from sdpo_kit.console import quiet_libraries

    quiet_libraries()  # before DPOConfig is built: its harmless FutureWarning would precede every message
    return parser


def parse_train_args(argv: list[str]):
    """`(StepwiseConfig, DPOConfig, overrides)` from flags and an optional `--config` YAML.

    `overrides` holds the DPOConfig values that differ from our defaults (for config.yaml).
    """
    cfg, args = train_parser().parse_args_and_config(argv)
    base = train_parser().parse_args_into_dataclasses(["--partitions", "x", "--out", "x"])[1]
    overrides = {
        f.name: _plain(getattr(args, f.name))
        for f in dataclasses.fields(args)
        if f.init and f.name != "output_dir" and getattr(args, f.name) != getattr(base, f.name)
    }
    args.precompute_ref_log_probs = True  # the reference is always the scorer's, never a live model
    if cfg.order == "sequential":
        args.train_sampling_strategy = "sequential"  # transformers' public, order-preserving sampler
    return cfg, args, overrides


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, dict, type(None))) else str(value)


def _lora_config(cfg: StepwiseConfig):
    if cfg.lora_r == 0:
        return None
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
    )


def _start_run(cfg, args, overrides, plan, state) -> dict:
    """Create run.json/config.yaml, or reload run.json when resuming."""
    import yaml

    run_dir = Path(cfg.out)
    exists = (run_dir / "run.json").exists()
    state.wait_for_everyone()  # every process looks before the main one writes
    if exists:
        if not cfg.resume:
            raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it, or another --out.")
        return read_json(run_dir / "run.json")
    run = {
        "mode": cfg.mode, "base_model": cfg.model, "base_fingerprint": None,
        "partitions": str(cfg.partitions), "beta": args.beta, "seed": args.seed, "status": "running",
        "steps": [
            {"step": t, "dir": f"step_{t}", "partition": [str(f) for f in files],
             "reference_fingerprint": None, "start_fingerprint": None, "model_fingerprint": None,
             "status": "pending"}
            for t, files in enumerate(plan, 1)
        ],
    }
    if state.is_main_process:
        resolved = {**dataclasses.asdict(cfg), "resume": False, **overrides}
        write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        write_json(run_dir / "run.json", run)
    state.wait_for_everyone()
    return run


def run_step(t: int, files: list[Path], start: str | Path, cfg, args, run: dict, state, progress=None) -> Path:
    """Step t: M_{t-1} = `start` scores `files`, then trains on them; returns M_t's folder."""
    from sdpo_kit import train_step as ts
    from sdpo_kit.models import load_model, model_fingerprint

    run_dir, began = Path(cfg.out), time.time()
    step_dir, rec = run_dir / f"step_{t}", run["steps"][t - 1]
    from transformers import set_seed

    model, tokenizer = load_model(start)
    ref_fp = model_fingerprint(model)
    model.to(state.device)  # the scorer runs where the model is; the trainer would move it anyway
    set_seed(args.seed)  # peft draws the fresh adapter before the Trainer seeds anything
    scored = ts.score_reference(files, model, tokenizer, args, ref_fp, step_dir, state)
    if scored.height == 0:
        raise TrainInputError(f"step {t}: no trainable pairs left in {[str(f) for f in files]} "
                              "(see reference.rejects.jsonl).")
    lora = _lora_config(cfg)
    start_fp = ref_fp if lora else None  # peft wraps the model in place: fingerprint it before
    args.output_dir = str(step_dir / "checkpoints")
    from sdpo_kit.console import library_bars_off

    with library_bars_off():  # TRL's pass over our precomputed reference draws its own bar in __init__
        trainer = ts.build_trainer(model, tokenizer, ts.to_dataset(scored, step_dir / "dataset", state), args, lora)
    if progress is not None:  # the run's one bar replaces the trainer's own bar and log printer
        from sdpo_kit.console import use_run_progress

        use_run_progress(trainer, progress)
        progress.start_step(t)
    start_fp = start_fp or model_fingerprint(trainer.model)
    rec.update(status="training", reference_fingerprint=ref_fp, start_fingerprint=start_fp)
    if t == 1:
        run["base_fingerprint"] = ref_fp
    if state.is_main_process:
        write_json(run_dir / "run.json", run)
    checkpoint = ts.latest_checkpoint(step_dir / "checkpoints") if cfg.resume else None
    if checkpoint:
        rec["resumed_from"] = Path(checkpoint).name
        if state.is_main_process:
            print(f"[sdpo train] step {t}: resuming from {checkpoint}")
    trainer.train(resume_from_checkpoint=checkpoint)
    final = ts.final_model(trainer)
    model_fp = model_fingerprint(final)
    if state.is_main_process:
        ts.save_model(final, tokenizer, step_dir / "model")
        ts.save_state(trainer, step_dir / "trainer_state.json")
        rejects = step_dir / "reference.rejects.jsonl"
        n_rejects = len(rejects.read_text().splitlines()) if rejects.exists() else 0
        summary = ts.summarize(t, scored, trainer, time.time() - began, ref_fp, model_fp, n_rejects)
        write_json(step_dir / "summary.json", summary)
        rec.update(status="done", model_fingerprint=model_fp)
        write_json(run_dir / "run.json", run)  # the step counts as done only once its files exist
    state.wait_for_everyone()
    if state.is_main_process:
        import shutil

        shutil.rmtree(step_dir / "checkpoints", ignore_errors=True)  # optimizer states: GBs per step
        shutil.rmtree(step_dir / "dataset", ignore_errors=True)
    rec.update(status="done", model_fingerprint=model_fp)
    return step_dir / "model"


def _run_progress(plan: list[list[Path]], args, world: int):
    """The run's one training bar, sized from the partitions' row counts (corrected as each step starts)."""
    import pyarrow.parquet as pq

    from sdpo_kit import console

    console.quiet_libraries()
    planned = [console.planned_steps(sum(pq.read_metadata(f).num_rows for f in files), args, world) for files in plan]
    enabled = not args.disable_tqdm and not os.environ.get("TQDM_DISABLE")
    return console.trainer_callback()(planned, enabled=enabled)


def train_stepwise(cfg: StepwiseConfig, args, overrides: dict | None = None) -> Path:
    """Run every step (or the single `dpo` run) into `cfg.out`; returns the run directory."""
    from accelerate import PartialState

    state = PartialState(cpu=args.use_cpu)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != state.num_processes:  # each process would train alone on all the data
        raise RuntimeError(f"{world} processes were launched but accelerate set up {state.num_processes}; "
                           "on CPU launch with `accelerate launch --multi_gpu --num_processes N` and keep use_cpu.")
    files = partition_files(cfg.partitions)
    plan = [[f] for f in files] if cfg.mode == "stepwise" else [files]
    run = _start_run(cfg, args, overrides or {}, plan, state)
    run_dir, current = Path(cfg.out), cfg.model
    progress = _run_progress(plan, args, world)
    from tqdm.auto import tqdm

    # One process speaks under accelerate; tqdm.write keeps the line off the run's bar.
    say = tqdm.write if state.is_main_process else (lambda *a, **k: None)
    for t, step_files in enumerate(plan, 1):
        done = run["steps"][t - 1]["status"] == "done" and (run_dir / f"step_{t}" / "model" / "config.json").is_file()
        if done:
            say(f"[sdpo train] step {t}/{len(plan)} already done, skipping")
        else:
            say(f"[sdpo train] step {t}/{len(plan)}: reference and start = {current}")
            run_step(t, step_files, current, cfg, args, run, state, progress)
        current = run_dir / f"step_{t}" / "model"
    progress.close()
    run["status"] = "done"
    if state.is_main_process:
        write_json(run_dir / "run.json", run)
    return run_dir
