"""The cross-fitting loop of `sdpo curate crossfit`: S's scores once, every (seed, fold) run, the output file.

    sdpo curate crossfit scored.parquet --config configs/train_cpu.yaml --folds 2 --seeds 3 --out difficulty.parquet

The command's settings and paths are `curate/crossfit.py`; one run's parts are `curate/folds.py`.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import polars as pl

from sdpo_kit.curate.folds import (assign_folds, check_disjoint, difficulty, digest, finish_run, run_done, run_name,
                                   score_fold, seed_agreement, train_fold, trained_ids)
from sdpo_kit.console import note
from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import read_parquet_checked, sha256_file, write_parquet
from sdpo_kit.runs import SCORER_KEY
from sdpo_kit.training.config import scorer_config

CROSSFIT_KEY = "sdpo_kit.crossfit"
LAYOUT = 1  # bump when a run's files or the aggregation change: older runs are then redone
PROG = "sdpo curate crossfit"


def crossfit(cfg, step_cfg: dict, args, given: set[str]) -> Path:
    """Every run (resuming finished ones), then `cfg.out` written atomically; returns its path."""
    from sdpo_kit.data import prompt_text
    from sdpo_kit.io import folder_lock
    from sdpo_kit.training.config import take_scorer_settings

    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every process would run every fold
        raise UsageError(PROG, "runs in one process (its runs are sequential); launch it without accelerate")
    data, out, work = check_paths(cfg)
    frame, meta = read_input(data)
    keys = frame.select(prompt_text()).to_series().to_list()
    if len(set(keys)) < cfg.folds:
        raise InputError(data, f"{len(set(keys))} distinct prompt(s) cannot fill --folds {cfg.folds} (folds are by "
                         "prompt); use fewer folds or more pairs")
    # One writer per --out and per work folder: two crossfits would mix their runs (io.folder_lock).
    with folder_lock(out, PROG), folder_lock(work, PROG, flag="--work"):
        scorer_meta = json.loads(meta[SCORER_KEY]) if SCORER_KEY in meta else None
        take_scorer_settings(args, given, scorer_meta, data, PROG, "pairs")
        s_scores, base = score_base(frame, step_cfg["model"], args)
        stamp = make_stamp(data, base, cfg, step_cfg, args)
        prepare_work(work, stamp, cfg.resume)
        assignment, runs, records = {}, [], []
        for s in range(cfg.seeds):
            folds = assign_folds(keys, cfg.folds, args.seed + s)
            assignment[str(s)] = folds.tolist()
            for f in range(cfg.folds):
                record = one_run(work / run_name(s, f), frame, folds, s, f, s_scores, scorer_meta, cfg, step_cfg, args)
                check_assignment(record, frame, folds, f)
                records.append(record)
                runs.append((s, read_parquet_checked(work / run_name(s, f) / "heldout.parquet")))
        check_disjoint(records)
        return write_output(out, frame, meta, runs, records, assignment, stamp, cfg, args)


def score_base(frame: pl.DataFrame, model: str, args) -> tuple[pl.DataFrame, dict]:
    """S's summed log-probs of every pair (the scorer's pair cache serves what `curate score` computed)."""
    from sdpo_kit.models import load_checked_model, model_fingerprint, resolve_model_path
    from sdpo_kit.scoring.cache import score_frame_cached

    m, tok = load_checked_model(model)
    scored, rejects = score_frame_cached(frame, m, tok, scorer_config(args), progress=False)
    if rejects:
        note(PROG, f"{len(rejects)} pair(s) S cannot score ({rejects[0].reason if hasattr(rejects[0], 'reason') else 'rejected'}"
            f"): no run scores them (n_runs 0)")
    base = {"model": str(resolve_model_path(model).resolve()), "fingerprint": model_fingerprint(m)}
    return scored.select("pair_id", "ref_chosen_logps", "ref_rejected_logps"), base


def make_stamp(data: Path, base: dict, cfg, step_cfg: dict, args) -> dict:
    """Everything that changes a run's numbers: a rerun with another stamp starts afresh."""
    from sdpo_kit.training.config import StepwiseConfig, resolved_settings

    settings = resolved_settings(StepwiseConfig(**step_cfg, partitions="-", out="-", mode="dpo"), args)
    for volatile in ("logging_dir", "disable_tqdm"):  # where logs go and bars: not what is computed
        settings["trl"].pop(volatile, None)
    return {"layout": LAYOUT, "input_sha256": sha256_file(data), "base_model": base["model"],
            "base_fingerprint": base["fingerprint"], "folds": cfg.folds, "seeds": cfg.seeds, "settings": settings}


def one_run(folder: Path, frame, folds, s: int, f: int, s_scores, scorer_meta, cfg, step_cfg, args) -> dict:
    """Run (seed s, fold f): its record if already finished, else train, score and record it."""
    record = run_done(folder)
    if record is not None:
        note(PROG, f"seed {s + 1}/{cfg.seeds} fold {f + 1}/{cfg.folds}: done earlier, kept")
        return record
    began = time.time()
    train = frame.filter(pl.Series(folds != f))
    heldout = frame.filter(pl.Series(folds == f))
    note(PROG, f"seed {s + 1}/{cfg.seeds} fold {f + 1}/{cfg.folds}: DPO on {train.height} pairs, then scoring "
        f"{heldout.height} held-out pairs")
    run_args = copy.deepcopy(args)
    run_args.seed = args.seed + s
    run_dir = train_fold(folder, train, scorer_meta, step_cfg, run_args)
    margins = score_fold(run_dir, heldout, s_scores, scorer_config(args), args.beta)
    from sdpo_kit.runs import read_run

    step = read_run(run_dir)["steps"][0]
    record = {"seed_index": s, "seed": run_args.seed, "fold": f, "model_fingerprint": step["model_fingerprint"],
              "trained_pair_ids": trained_ids(run_dir)}
    record = finish_run(folder, record, margins, cfg.keep_models)
    note(PROG, f"seed {s + 1} fold {f + 1}: {time.time() - began:.0f} s")
    return record


def check_assignment(record: dict, frame: pl.DataFrame, folds, f: int) -> None:
    """A kept run must match this command's folds (same stamp, so a mismatch means a damaged folder)."""
    ids = frame["pair_id"]
    want_scored = set(ids.filter(pl.Series(folds == f)).to_list())
    if not set(record["scored_pair_ids"]) <= want_scored or set(record["trained_pair_ids"]) & want_scored:
        raise InputError(f"seed {record['seed_index']} fold {f}", "its recorded pairs do not match the fold "
                         "assignment; delete its run folder and rerun")


def write_output(out: Path, frame, meta: dict, runs, records, assignment, stamp, cfg, args) -> Path:
    """The input's rows and columns + the difficulty columns; the record under the footer key `sdpo_kit.crossfit`."""
    diff = difficulty(frame["pair_id"].to_list(), runs, cfg.seeds)
    agreement = seed_agreement(diff, cfg.seeds)
    record = {**stamp, "input": {"path": str(Path(cfg.data)), "sha256": stamp["input_sha256"]},
              "seed": args.seed, "beta": args.beta,
              "loss": "-log sigmoid(m): TRL 1.16's sigmoid loss (label_smoothing not applied, as in its training)",
              "assignment": {"by": "prompt", "folds_per_seed": assignment},
              "runs": [{"seed_index": r["seed_index"], "seed": r["seed"], "fold": r["fold"],
                        "model_fingerprint": r["model_fingerprint"], "trained_pairs": len(r["trained_pair_ids"]),
                        "trained_sha256": digest(r["trained_pair_ids"]), "scored_pairs": len(r["scored_pair_ids"]),
                        "scored_sha256": digest(r["scored_pair_ids"])} for r in records],
              "agreement": agreement}
    result = frame.hstack(diff.drop("pair_id"))
    write_parquet(out, result, metadata={**meta, CROSSFIT_KEY: json.dumps(record, default=str)})
    scored = result.filter(pl.col("n_runs") > 0)
    note(PROG, f"{out}: {result.height} pairs, {scored.height} scored by {cfg.seeds} seed(s) x {cfg.folds} folds; "
        f"mean val_loss {scored['val_loss'].mean():.4f}, mean learned_share {scored['learned_share'].mean():.3f}")
    for a in agreement:
        rho = "undefined" if a["spearman"] is None else f"{a['spearman']:.3f}"
        note(PROG, f"val_loss agreement, seed {a['seeds'][0]} vs seed {a['seeds'][1]}: Spearman {rho}")
    return out


def check_paths(cfg) -> tuple[Path, Path, Path]:
    """(input, out, work): the input exists; neither --out nor the work folder replaces or sits inside it."""
    from sdpo_kit.io import check_parquet, refuse_overwriting_input

    data, out = Path(cfg.data), Path(cfg.out)
    work = Path(cfg.work) if cfg.work else out.with_name(out.name + ".crossfit")
    if data.is_dir():
        raise UsageError(f"{cfg.data}", "is a folder; pass the scored parquet written by `sdpo curate score`")
    check_parquet(data)
    if out.is_dir():
        raise UsageError(f"--out {out}", "is a folder; give the path of the .parquet file to write")
    refuse_overwriting_input([data], out)
    refuse_overwriting_input([data], work, "--work")
    if work.resolve() == out.resolve():
        raise UsageError(f"--work {work}", "equals --out")
    return data, out, work


def read_input(data: Path) -> tuple[pl.DataFrame, dict]:
    """The scored pairs (earlier crossfit columns dropped) and their footer metadata."""
    from sdpo_kit.curate.folds import ADDED
    from sdpo_kit.io import read_parquet_checked, read_parquet_metadata

    frame = read_parquet_checked(data)
    missing = [c for c in ("pair_id", "prompt", "chosen", "rejected") if c not in frame.columns]
    if missing:
        raise InputError(data, f"missing column(s) {', '.join(missing)}: pass pairs written by `sdpo curate score`")
    dup = frame["pair_id"].is_duplicated()
    if dup.any():
        raise InputError(data, f"pair_id {frame['pair_id'].filter(dup)[0]!r} appears twice (row "
                         f"{int(dup.arg_true()[0]) + 1}); score a deduplicated file")
    meta = read_parquet_metadata(data)
    meta.pop(CROSSFIT_KEY, None)
    return frame.drop([c for c in ADDED if c in frame.columns]), meta


def prepare_work(work: Path, stamp: dict, resume: bool) -> None:
    """The work folder, emptied unless it holds runs made with the same `stamp`; says why it starts afresh."""
    from sdpo_kit.stamps import restamp

    done = len(list(work.glob("*/record.json")))
    why = restamp(work, stamp, resume, "stamp.json")
    if why is not None:
        note(PROG, f"starting afresh{f', {done} finished run(s) in {work} discarded' if done else ''}: {why}")
