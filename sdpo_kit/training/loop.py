"""Stepwise DPO (sDPO) run: step t trains on partition t; M_{t-1} is both its reference and its start.

    sdpo train --partitions parts/ --model default --out runs/demo --max_length 256 --num_train_epochs 1

Flags are the `StepwiseConfig` fields (`sdpo_kit/training/config.py`) plus every `trl.DPOConfig` field
(beta, learning_rate, loss_type, max_length, report_to, ...); `--config run.yaml` supplies the same
keys and flags override it. This module is the run: the partitions, the run.json record, resuming,
the loop over the steps and the run's progress bar. Each step is `sdpo_kit/training/step.py`'s
`run_step` (score the reference -> build the trainer -> train -> save): a fresh `trl.DPOTrainer`
fed with the reference log-probs that the curation scorer computed with M_{t-1}, so no reference
model is ever held in memory. The run directory layout is in docs/ARCHITECTURE.md ("Runs").
`--reference_schedule fixed|mix` keeps the start M_{t-1} but scores another reference (S, or a
weight average): `sdpo_kit/training/reference.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from sdpo_kit.console import note
from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import check_out_dir, folder_lock, same_or_inside, write_text
from sdpo_kit.owner import claim_folder, write_owner
from sdpo_kit.models import load_checked_model, model_fingerprint, resolve_model_path
from sdpo_kit.runs import (check_partitions, partition_files, partitions_digest, read_run, schedule_record,
                           write_run)
from sdpo_kit.training.config import (RUN_KEYS, StepwiseConfig, finish_args, trl_overrides, plain_value, resolved_settings,
                                      scorer_config, train_parser, trainer_autocast)
from sdpo_kit.training.step import run_step


def restore_settings(run_dir: Path, cfg, args, given: set[str] | None):
    """The run's own (cfg, args) for `--resume`, or a UsageError naming every setting that differs.

    The run is rebuilt from its config.yaml (the flags it started with) through the same parser,
    so the values TRL/transformers derive from them come out the same; a run that records its
    full resolved settings (run.json `settings`) is checked against them too. `given`: the
    settings this command set (None: every setting that differs from the defaults).
    """
    from sdpo_kit.yaml_config import load_yaml_capped

    run = read_run(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise InputError(run_dir, "has run.json but no config.yaml: its settings are unknown, so it cannot be "
                         "resumed; start a new --out")
    stored = load_yaml_capped(path.read_text(encoding="utf-8"), path) or {}  # an edited one: no alias bomb
    parser = train_parser()
    parser.set_defaults_with_config(**{**stored, "out": cfg.out, "partitions": cfg.partitions, "resume": True})
    old_cfg, old_args = parser.parse_args_into_dataclasses([])
    overrides = trl_overrides(old_args)
    finish_args(old_cfg, old_args)  # as `args` was: the comparison sees only what the user set
    if given is None:
        given = set(trl_overrides(args)) | {f.name for f in dataclasses.fields(cfg)
                                         if getattr(cfg, f.name) != f.default and f.name not in RUN_KEYS}
    diffs = _run_differences(run, cfg, given)
    for key in sorted(given - set(RUN_KEYS) - {"model"}):
        obj_new, obj_old = (cfg, old_cfg) if hasattr(old_cfg, key) else (args, old_args)
        new, old = plain_value(getattr(obj_new, key)), plain_value(getattr(obj_old, key))
        if new != old:
            diffs.append(f"{key} {old!r} -> {new!r}")
    if diffs:
        raise UsageError(f"--resume {run_dir}", "this run was started with other settings: " + "; ".join(diffs)
                         + ". Resume with only --partitions/--out/--resume, or train into a new --out")
    recorded = run.get("settings")
    if recorded:  # same flags must still resolve to the same settings (another TRL could differ)
        now = resolved_settings(old_cfg, old_args)
        drift = [f"{k} {recorded[g][k]!r} -> {now[g].get(k)!r}" for g in ("sdpo", "trl") for k in recorded[g]
                 if now[g].get(k) != recorded[g][k]]
        if drift:
            raise UsageError(f"--resume {run_dir}", "its flags now resolve to other settings (other library "
                             "versions or hardware?): " + "; ".join(drift))
    return old_cfg, old_args, overrides


def _run_differences(run: dict, cfg, given: set[str]) -> list[str]:
    """Partitions (path and content) and base model that differ from what run.json records."""
    diffs = []
    if run.get("partitions") and Path(cfg.partitions).resolve() != Path(run["partitions"]).resolve():
        diffs.append(f"partitions {run['partitions']} -> {Path(cfg.partitions).resolve()}")
    elif run.get("partitions_sha256"):
        now = partitions_digest(cfg.partitions, partition_files(cfg.partitions))
        if now != run["partitions_sha256"]:
            diffs.append(f"partitions {run['partitions']}: manifest.json or step files changed since the run started")
    if "model" in given:
        model = str(resolve_model_path(cfg.model).resolve())
        if model != str(run["base_model"]):
            diffs.append(f"model {run['base_model']} -> {model}")
    return diffs


def _start_run(cfg, args, overrides, plan, state, files) -> dict:
    """Create run.json/config.yaml with everything the run uses, or reload run.json when resuming."""
    import yaml

    run_dir = Path(cfg.out)
    exists = (run_dir / "run.json").exists()
    state.wait_for_everyone()  # every process looks before the main one writes
    if exists:
        if not cfg.resume:
            raise UsageError(f"--out {run_dir}", "already holds a run: pass --resume to continue it, or another --out")
        return read_run(run_dir)
    base_fingerprint = model_fingerprint(load_checked_model(cfg.model)[0])  # S (loading it also checks it)
    run = {
        "mode": cfg.mode, "base_model": str(resolve_model_path(cfg.model).resolve()), "base_model_given": cfg.model,
        "base_fingerprint": base_fingerprint, "partitions": str(Path(cfg.partitions).resolve()),
        "partitions_sha256": partitions_digest(cfg.partitions, files),
        **schedule_record(cfg.mode, cfg.schedule, cfg.mix_alpha, args.beta),
        "seed": args.seed, "status": "running", "settings": resolved_settings(cfg, args),
        # float32, or the autocast dtype of the policy's forward, which every scoring pass of the run shares
        "precision": trainer_autocast(args) or "float32",
        "steps": [
            {"step": t, "dir": f"step_{t}", "partition": [str(Path(f).resolve()) for f in files],
             "reference_fingerprint": None, "start_fingerprint": None, "model_fingerprint": None,
             "status": "pending"}
            for t, files in enumerate(plan, 1)
        ],
    }
    if state.is_main_process:
        write_owner(run_dir, COMMAND)
        resolved = {**dataclasses.asdict(cfg), "resume": False, **overrides}
        write_text(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        write_run(run_dir, run)
    state.wait_for_everyone()
    return run


def _run_progress(plan: list[list[Path]], args, world: int):
    """The run's one training bar, sized from the partitions' row counts (corrected as each step starts)."""
    import pyarrow.parquet as pq

    from sdpo_kit import console
    from sdpo_kit.io import check_parquet, reading

    def rows(f: Path) -> int:  # a truncated or corrupt step file is one InputError line, not a pyarrow traceback
        check_parquet(f)
        with reading(f):
            return pq.read_metadata(f).num_rows

    console.quiet_libraries()
    sizes = [sum(rows(f) for f in files) for files in plan]
    planned = [console.planned_steps(n, args, world) for n in sizes]
    for t, (n, steps) in enumerate(zip(sizes, planned), 1):
        if steps < 1:  # a step that takes no optimiser step would leave M_t = M_{t-1} and call it trained
            raise InputError(f"step {t}: {n} pairs in {', '.join(map(str, plan[t - 1]))} give no optimiser step "
                             f"(batch {args.per_device_train_batch_size} x {world} processes"
                             f"{', drop_last' if args.dataloader_drop_last else ''}); merge partitions or lower the batch")
    enabled = not args.disable_tqdm and not os.environ.get("TQDM_DISABLE")
    return console.trainer_callback()(planned, enabled=enabled)


def train_stepwise(cfg: StepwiseConfig, args, overrides: dict | None = None, given: set[str] | None = None) -> Path:
    """Run every step (or the single `dpo` run) into `cfg.out`; returns the run directory.

    With `cfg.resume` and an existing run, the run's own settings are restored (`restore_settings`);
    `given` names the settings this command set (the CLI passes `given_keys(argv)`; None: those
    differing from the defaults) and any of them that differs from the run's is refused.
    """
    from accelerate import PartialState

    state = PartialState(cpu=args.use_cpu)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != state.num_processes:  # each process would train alone on all the data
        raise RuntimeError(f"{world} processes were launched but accelerate set up {state.num_processes}; "
                           "on CPU launch with `accelerate launch --multi_gpu --num_processes N` and keep use_cpu.")
    files = partition_files(cfg.partitions)
    check_partitions(cfg.partitions, files)
    run_dir = Path(cfg.out)
    if same_or_inside(run_dir, cfg.partitions):
        raise UsageError(f"--out {run_dir}", f"is inside the partitions folder {cfg.partitions}; pick another --out")
    check_out_dir(run_dir, keep=True)
    # One writer per run folder (two runs would mix run.json, config.yaml and step folders); the main process holds it.
    with folder_lock(run_dir, COMMAND) if state.is_main_process else contextlib.nullcontext():
        claim_folder(run_dir, COMMAND, True, inputs=[cfg.partitions])  # not the partitions', nor another's folder
        return _train(cfg, args, overrides, given, state, files, world)


COMMAND = "sdpo train"


def _train(cfg, args, overrides, given, state, files, world) -> Path:
    """The run after its checks, under the folder lock: settings (restored on --resume), run.json, the steps."""
    run_dir = Path(cfg.out)
    if cfg.resume and (run_dir / "run.json").exists():
        cfg, args, overrides = restore_settings(run_dir, cfg, args, given)
    plan = [[f] for f in files] if cfg.mode == "stepwise" else [files]
    unset = {f.name: f.default for f in dataclasses.fields(StepwiseConfig)
             if f.name in ("reference_schedule", "ref_mix_alpha")}
    if cfg.mode == "dpo" and any(getattr(cfg, k) != v for k, v in unset.items()):
        note("sdpo train", "--mode dpo trains once against S: --reference_schedule/--ref_mix_alpha are ignored")
    progress = _run_progress(plan, args, world)  # refuses a step with no optimiser step before run.json
    run = _start_run(cfg, args, overrides or {}, plan, state, files)
    scorer = scorer_config(args)  # the run's one scorer config, handed to every step
    current = run["base_model"]  # absolute since run.json records it so: the same S from any folder
    for t, step_files in enumerate(plan, 1):
        done = run["steps"][t - 1]["status"] == "done" and (run_dir / f"step_{t}" / "model" / "config.json").is_file()
        if done:
            note("sdpo train", f"step {t}/{len(plan)} already done, skipping")
        else:
            what = "reference and start" if cfg.schedule == "stepwise" else f"start (reference: {cfg.schedule})"
            note("sdpo train", f"step {t}/{len(plan)}: {what} = {current}")
            run_step(t, step_files, current, cfg, args, scorer, run, state, progress)
        current = run_dir / f"step_{t}" / "model"
    progress.close()
    run["status"] = "done"
    if state.is_main_process:
        write_run(run_dir, run)
    return run_dir


