"""Stepwise DPO (sDPO) run: step t trains on partition t; M_{t-1} is both its reference and its start.

    sdpo train --partitions parts/ --model default --out runs/demo --max_length 256 --num_train_epochs 1

Flags are the `StepwiseConfig` fields (`sdpo_kit/train/config.py`) plus every `trl.DPOConfig` field
(beta, learning_rate, loss_type, max_length, report_to, ...); `--config run.yaml` supplies the same
keys and flags override it. This module is the run: the partitions, the run.json record, resuming,
the loop over the steps and the run's progress bar. Each step is `sdpo_kit/train/step.py`'s
`run_step` (score the reference -> build the trainer -> train -> save): a fresh `trl.DPOTrainer`
fed with the reference log-probs that the curation scorer computed with M_{t-1}, so no reference
model is ever held in memory. The run directory layout is in docs/ARCHITECTURE.md ("Runs").
`--reference_schedule fixed|mix` keeps the start M_{t-1} but scores another reference (S, or a
weight average): `sdpo_kit/train/reference.py`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import check_out_dir, read_json, write_json, write_text
from sdpo_kit.models import load_checked_model, model_fingerprint, resolve_model_path
from sdpo_kit.train.config import (RUN_KEYS, StepwiseConfig, _finish, _overrides, _plain, prepare, resolved_settings,
                                   train_parser)
from sdpo_kit.train.config import parse  # noqa: F401  (`sdpo train` parses TRL's fields beside ours: sdpo_kit.config)
from sdpo_kit.train.step import run_step


def partition_files(folder: str | Path) -> list[Path]:
    """step_1..step_T files in step order: from manifest.json when present, else step_*.parquet.

    Steps must be numbered 1..T without a gap: a missing step_2 is refused, never trained as
    "step 2" with step_3's pairs.
    """
    folder = Path(folder)
    if folder.is_file():
        raise InputError(f"--partitions {folder}", "is a file, not a folder: pass the folder written by "
                         "`sdpo curate split` (manifest.json, step_*.parquet)")
    if not folder.is_dir():
        raise InputError(f"--partitions {folder}", "folder does not exist (write it with `sdpo curate split`)")
    manifest = folder / "manifest.json"
    if manifest.is_file():
        steps = _manifest_steps(manifest)
        numbers, files = [s["step"] for s in steps], [folder / str(s["file"]) for s in steps]
    else:
        found = [(p, p.stem.split("_", 1)[1]) for p in folder.glob("step_*.parquet")]
        files = sorted((p for p, n in found if n.isdigit()), key=lambda p: int(p.stem.split("_")[1]))
        numbers = [int(p.stem.split("_")[1]) for p in files]
    if not files:
        raise InputError(f"--partitions {folder}", "no manifest.json and no step_*.parquet: not a folder written "
                         "by `sdpo curate split`")
    gaps = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
    if gaps or len(set(numbers)) != len(numbers):
        raise InputError(f"--partitions {folder}", f"steps {numbers} are not 1..T (missing step(s) {gaps}): "
                         "refusing to train a later partition as an earlier step")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"--partitions {folder}", f"manifest.json names missing file(s) {missing}")
    return files


def _manifest_steps(path: Path) -> list[dict]:
    """manifest.json's `steps` in step order, or a one-line InputError naming what is wrong."""
    import json

    try:
        steps = read_json(path)["steps"]
        ok = isinstance(steps, list) and all(isinstance(s["step"], int) and s.get("file") for s in steps)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise InputError(path, f"not a partitions manifest ({type(err).__name__}: {err})") from None
    if not ok or not steps:
        raise InputError(path, "not a partitions manifest: `steps` must list {step: int, file: name}")
    return sorted(steps, key=lambda s: s["step"])


def partitions_digest(folder: str | Path, files: list[Path]) -> dict:
    """sha256 of manifest.json (null when absent) and over every partition file's bytes, in step order."""
    import hashlib

    manifest = Path(folder) / "manifest.json"
    whole = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                whole.update(block)
    return {"manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None,
            "files_sha256": whole.hexdigest()}


def read_run(run_dir: str | Path) -> dict:
    """run.json of a run directory, checked to be a run record (else a one-line InputError)."""
    import json

    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise InputError(Path(run_dir), "no run.json: not a run directory written by `sdpo train`")
    try:
        run = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err}); the run record is damaged") from None
    missing = [k for k in ("base_model", "steps") if not isinstance(run, dict) or k not in run]
    if missing:
        raise InputError(path, f"not a run record: missing {', '.join(missing)} (written by `sdpo train`)")
    if not isinstance(run["base_model"], str) or not isinstance(run["steps"], list):
        raise InputError(path, "not a run record: `base_model` must be a path and `steps` a list")
    bad = [i for i, s in enumerate(run["steps"]) if not isinstance(s, dict) or not {"step", "dir"} <= set(s)
           or not isinstance(s["step"], int) or not isinstance(s["dir"], str)]
    if bad:
        raise InputError(path, f"not a run record: `steps` entries {bad} lack an integer step and a dir")
    return run


def restore_settings(run_dir: Path, cfg, args, given: set[str] | None):
    """The run's own (cfg, args) for `--resume`, or a UsageError naming every setting that differs.

    The run is rebuilt from its config.yaml (the flags it started with) through the same parser,
    so the values TRL/transformers derive from them come out the same; a run that records its
    full resolved settings (run.json `settings`) is checked against them too. `given`: the
    settings this command set (None: every setting that differs from the defaults).
    """
    import yaml

    run = read_run(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise InputError(run_dir, "has run.json but no config.yaml: its settings are unknown, so it cannot be "
                         "resumed; start a new --out")
    stored = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    parser = train_parser()
    parser.set_defaults_with_config(**{**stored, "out": cfg.out, "partitions": cfg.partitions, "resume": True})
    old_cfg, old_args = parser.parse_args_into_dataclasses([])
    overrides = _overrides(old_args)
    _finish(old_cfg, old_args)  # as `args` was: the comparison sees only what the user set
    if given is None:
        given = set(_overrides(args)) | {f.name for f in dataclasses.fields(cfg)
                                         if getattr(cfg, f.name) != f.default and f.name not in RUN_KEYS}
    diffs = _run_differences(run, cfg, given)
    for key in sorted(given - set(RUN_KEYS) - {"model"}):
        obj_new, obj_old = (cfg, old_cfg) if hasattr(old_cfg, key) else (args, old_args)
        new, old = _plain(getattr(obj_new, key)), _plain(getattr(obj_old, key))
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
        "beta": args.beta, "seed": args.seed, "status": "running", "settings": resolved_settings(cfg, args),
        "reference_schedule": cfg.reference_schedule if cfg.mode == "stepwise" else None,
        "ref_mix_alpha": cfg.ref_mix_alpha if cfg.mode == "stepwise" and cfg.reference_schedule == "mix" else None,
        "steps": [
            {"step": t, "dir": f"step_{t}", "partition": [str(Path(f).resolve()) for f in files],
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
    planned = [console.planned_steps(sum(rows(f) for f in files), args, world) for files in plan]
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
    run_dir = Path(cfg.out)
    check_out_dir(run_dir, keep=True)
    if cfg.resume and (run_dir / "run.json").exists():
        cfg, args, overrides = restore_settings(run_dir, cfg, args, given)
    plan = [[f] for f in files] if cfg.mode == "stepwise" else [files]
    if state.is_main_process and cfg.mode == "dpo" and (cfg.reference_schedule, cfg.ref_mix_alpha) != ("stepwise", 0.5):
        print("[sdpo train] --mode dpo trains once against S: --reference_schedule/--ref_mix_alpha are ignored")
    run = _start_run(cfg, args, overrides or {}, plan, state, files)
    current = run["base_model"]  # absolute since run.json records it so: the same S from any folder
    progress = _run_progress(plan, args, world)
    from tqdm.auto import tqdm

    # One process speaks under accelerate; tqdm.write keeps the line off the run's bar.
    say = tqdm.write if state.is_main_process else (lambda *a, **k: None)
    for t, step_files in enumerate(plan, 1):
        done = run["steps"][t - 1]["status"] == "done" and (run_dir / f"step_{t}" / "model" / "config.json").is_file()
        if done:
            say(f"[sdpo train] step {t}/{len(plan)} already done, skipping")
        else:
            schedule = run.get("reference_schedule") or "stepwise"
            what = "reference and start" if schedule == "stepwise" else f"start (reference: {schedule})"
            say(f"[sdpo train] step {t}/{len(plan)}: {what} = {current}")
            run_step(t, step_files, current, cfg, args, run, state, progress)
        current = run_dir / f"step_{t}" / "model"
    progress.close()
    run["status"] = "done"
    if state.is_main_process:
        write_json(run_dir / "run.json", run)
    return run_dir


def run(cfg, args, given: set[str] | None = None) -> Path:
    """`sdpo train`: every step into `cfg.out`; `given` (the settings this command set) guards --resume."""
    import os

    given = set(given or ())
    overrides = prepare(cfg, args, given)
    run_dir = train_stepwise(cfg, args, overrides, given=given)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"run: {run_dir}  (run.json, config.yaml, step_*/model, step_*/summary.json)")
    return run_dir
