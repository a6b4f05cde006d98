"""One sDPO step, top to bottom: score the reference -> build the trainer -> train -> save M_t.

    python -m pytest -q tests/test_train.py -k exact_reference

`run_step` is the recipe; the helpers below it are in the order it calls them. The run around
the steps (partitions, run.json, resume, the loop, the progress bar) is `sdpo_kit/training/loop.py`.

The reference log-probs come from the curation scorer (`score_frame_cached`: step 1 reads what
`sdpo curate score` already computed with S), cached in `step_t/reference.parquet`, and reach TRL
through its own `precompute_ref_log_probs=True` path, so TRL loads no reference model: the dataset
and the trainer that reads them are `sdpo_kit/training/trainer.py`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path

from sdpo_kit.console import note
from sdpo_kit.errors import InputError
from sdpo_kit.io import atomic_path, read_parquet_checked, read_parquet_metadata, write_json, write_jsonl, write_parquet
from sdpo_kit.models import load_checked_model, model_fingerprint, save_model
from sdpo_kit.runs import REFERENCE_KEY, reference_record, write_run
from sdpo_kit.scoring.frame import SCORED_LAYOUT, ld_weighted
from sdpo_kit.training.divergence import train_checked
from sdpo_kit.training.reference import FIRST_STEP_TOLERANCE, check_reference_logps, reference_for_step
from sdpo_kit.training.trainer import REF_COLUMNS, build_trainer, final_model, latest_checkpoint, to_dataset



def run_step(t: int, files: list[Path], start: str | Path, cfg, args, scorer, run: dict, state,
             progress=None) -> Path:
    """Step t: M_{t-1} = `start` trains on `files` against its schedule's reference; returns M_t's folder.

    `cfg` is the run's `StepwiseConfig`, `args` its `trl.DPOConfig`, `scorer` its one `ScoreConfig`
    (`training.config.scorer_config`); `run` is run.json's dict
    (this step's record is updated and written as the step goes); `progress` the run's one bar.
    """
    from transformers import set_seed

    from sdpo_kit.console import library_bars_off, use_run_progress

    run_dir, began = Path(cfg.out), time.time()
    step_dir, rec = run_dir / f"step_{t}", run["steps"][t - 1]
    model, tokenizer = load_checked_model(start)
    begin_fp = model_fingerprint(model)
    _check_start(t, begin_fp, start, run)
    model.to(state.device)  # the scorer runs where the model is; the trainer would move it anyway
    set_seed(args.seed)  # peft draws the fresh adapter before the Trainer seeds anything

    # 1. Score the reference: the schedule's reference model on this step's pairs.
    scored, ref_fp, ref_check = score_step_reference(t, files, start, model, begin_fp, tokenizer, cfg, scorer, run,
                                                       state)
    scored = ld_weighted(scored, args.ld_alpha)  # TRL weights its own reference by ld_alpha too
    if scored.height == 0:
        raise InputError(f"step {t}: no trainable pairs left in {[str(f) for f in files]} "
                         "(see reference.rejects.jsonl).")

    # 2. Build the trainer: a fresh DPOTrainer reading those log-probs, on M_{t-1} (+ a fresh LoRA).
    lora = lora_config(cfg)
    start_fp = begin_fp if lora else None  # peft wraps the model in place: fingerprint it before
    args.output_dir = str(step_dir / "checkpoints")
    with library_bars_off():  # TRL's pass over our precomputed reference draws its own bar in __init__
        dataset = to_dataset(scored, step_dir / "dataset", state, args.length_column_name, args.max_length)
        trainer = build_trainer(model, tokenizer, dataset, args, lora, trim=cfg.trim_padding)
    if progress is not None:  # the run's one bar replaces the trainer's own bar and log printer
        use_run_progress(trainer, progress)
        progress.start_step(t)
    start_fp = start_fp or model_fingerprint(trainer.model)
    rec.update(status="training", reference_fingerprint=ref_fp, start_fingerprint=start_fp)
    if t == 1 and not run.get("base_fingerprint"):
        run["base_fingerprint"] = begin_fp
    if state.is_main_process:
        write_run(run_dir, run)

    # 3. Train (from the step's newest checkpoint when resuming).
    checkpoint = latest_checkpoint(step_dir / "checkpoints") if cfg.resume else None
    if checkpoint:
        rec["resumed_from"] = Path(checkpoint).name
        note("sdpo train", f"step {t}: resuming from {checkpoint}")
    train_checked(t, trainer, checkpoint, args, run, run_dir, state)  # a divergence: run.json, one line

    # 4. Save M_t, the trainer state and summary.json; run.json marks the step done once they exist.
    save_step(t, trainer, scored, tokenizer, cfg, scorer, run, state, began, ref_fp, ref_check)
    return step_dir / "model"


def save_step(t: int, trainer, scored, tokenizer, cfg, scorer, run: dict, state, began: float, ref_fp: str,
              ref_check: dict | None) -> None:
    """Step t's end: M_t, its trainer state and summary.json saved, then run.json marks the step done.

    The end-of-step measurement runs on every process (the scorer gathers); only the main process
    writes. The step's checkpoints and dataset copy are removed once everything is on disk.
    `began` is the step's start (`time.time()`), for summary.json's `seconds`.
    """
    run_dir = Path(cfg.out)
    step_dir, rec = run_dir / f"step_{t}", run["steps"][t - 1]
    final = final_model(trainer)
    model_fp = model_fingerprint(final)
    end = end_of_step(scored, final, tokenizer, scorer, state, trainer.args.ld_alpha)  # every process: gathered
    if state.is_main_process:
        save_model(final, tokenizer, step_dir / "model")
        with atomic_path(step_dir / "trainer_state.json") as tmp:
            trainer.state.save_to_json(str(tmp))
        rejects = step_dir / "reference.rejects.jsonl"
        n_rejects = len(rejects.read_text().splitlines()) if rejects.exists() else 0
        summary = step_summary(t, scored, trainer, time.time() - began, ref_fp, model_fp, n_rejects, end,
                            reference_check=ref_check, tolerance=FIRST_STEP_TOLERANCE)
        summary.update(reference_schedule=run.get("reference_schedule"), reference_model=rec.get("reference_model"))
        write_json(step_dir / "summary.json", summary)
        rec.update(status="done", model_fingerprint=model_fp)
        write_run(run_dir, run)  # the step counts as done only once its files exist
    state.wait_for_everyone()
    if state.is_main_process:
        shutil.rmtree(step_dir / "checkpoints", ignore_errors=True)  # optimizer states: GBs per step
        shutil.rmtree(step_dir / "dataset", ignore_errors=True)
    rec.update(status="done", model_fingerprint=model_fp)


def _check_start(t: int, fingerprint: str, start, run: dict) -> None:
    """Step t must start from exactly the weights the run recorded (S, or M_{t-1})."""
    want = run.get("base_fingerprint") if t == 1 else run["steps"][t - 2].get("model_fingerprint")
    if want and fingerprint != want:
        raise InputError(start, f"weights changed since the run recorded them (fingerprint {fingerprint}, "
                         f"run.json has {want}); train into a new --out")


def score_step_reference(t, files, start, model, start_fp, tokenizer, cfg, scorer, run, state):
    """Step t's reference log-probs under the schedule: `(scored, reference fingerprint, check)`.

    When the reference is the start (`stepwise`, and step 1 of every schedule) the start model
    scores and `check` is None (the first loss ln 2 checks it). Otherwise the reference model is
    loaded only to be scored, checked against run.json, re-scored on a few pairs without cache
    (`check`), and freed before training.
    """
    step_dir, rec = Path(cfg.out) / f"step_{t}", run["steps"][t - 1]
    reference, kind = reference_for_step(t, start, cfg, run, state)
    rec["reference_model"] = str(reference)
    if reference == Path(start):
        rec["reference"] = reference_record(t, kind, reference, start_fp)
        return score_reference(files, model, tokenizer, scorer, start_fp, step_dir, state), start_fp, None
    ref_model = load_checked_model(reference)[0]
    ref_fp = model_fingerprint(ref_model)
    want = run.get("base_fingerprint") if cfg.schedule == "fixed" else rec.get("reference_fingerprint")
    if want and ref_fp != want:
        raise InputError(reference, f"reference weights have fingerprint {ref_fp}, but run.json records {want}; "
                         "train into a new --out")
    rec["reference"] = reference_record(t, kind, reference, ref_fp)
    ref_model.to(state.device)
    scored = score_reference(files, ref_model, tokenizer, scorer, ref_fp, step_dir, state)
    check = check_reference_logps(scored, ref_model, tokenizer, scorer)
    if not check["exact"]:
        note("sdpo train", f"WARNING step {t}: reference log-probs differ from a fresh pass of {reference} by "
             f"{check['max_abs_diff']:.3g}")
    del ref_model  # no reference model in memory while training
    return scored, ref_fp, check


def score_reference(files: list[Path], model, tokenizer, scorer, fingerprint: str, step_dir: Path, state):
    """The partition files scored by `model` (the step's reference), cached in `step_dir/reference.parquet`.

    The cache is reused only if it was written for the same weights and tokenisation settings.
    Under several processes each scores a contiguous share (the scorer gathers the whole on
    every process); the main process writes the file and the rejects beside it.
    """
    import polars as pl

    from sdpo_kit.scoring.cache import score_frame_cached

    path = step_dir / "reference.parquet"
    settings = {"fingerprint": fingerprint, "max_length": scorer.max_length, "truncation_mode": scorer.truncation_mode,
                "scored_layout": SCORED_LAYOUT}  # an older file lacks the *_shared sums that ld_alpha reads
    # Under autocast also how the scorer runs (rows at their own width, fp32 attention on CPU), so a resumed
    # step does not reuse a reference scored by older bf16 code; fp32 runs keep their old stamps
    settings |= {k: v for k, v in scorer.settings().items() if k not in ("max_length", "truncation_mode", "dtype")}
    if not _cache_matches(path, settings):  # every process looks before anything is written
        parts, rejects = [], []
        for file in files:
            scored, dropped = score_frame_cached(read_parquet_checked(file), model, tokenizer, scorer, file=str(file),
                                                 accelerator=state, progress=state.is_main_process)
            parts.append(scored)
            rejects += [asdict(r) if is_dataclass(r) else dict(r) for r in dropped]
        if state.is_main_process:
            write_jsonl(step_dir / "reference.rejects.jsonl", rejects)
            write_parquet(path, pl.concat(parts, how="diagonal_relaxed"),
                          metadata={REFERENCE_KEY: json.dumps(settings)})
    state.wait_for_everyone()
    return pl.read_parquet(path)


def _cache_matches(path: Path, settings: dict) -> bool:
    if not path.exists():
        return False
    stored = read_parquet_metadata(path).get(REFERENCE_KEY)
    return stored is not None and json.loads(stored) == settings


def lora_config(cfg):
    """A fresh LoRA adapter's `peft.LoraConfig` for the step (None: full fine-tuning, `lora_r` 0)."""
    if cfg.lora_r == 0:
        return None
    from peft import LoraConfig

    targets = cfg.lora_target_modules
    return LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, task_type="CAUSAL_LM",
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
    )


def end_of_step(scored, model, tokenizer, scorer, state, ld_alpha: float | None = None) -> dict:
    """DPO loss, reward margin and reward accuracy of M_t over its WHOLE partition, after the step.

    One scorer pass of M_t (`model`) on the step's pairs (through the pair cache, split over the
    processes and gathered, so 1 or N processes give the same definition); the reference
    log-probs are the step's reference's, already in `scored`. Per pair m = β·((π_w − r_w) − (π_l − r_l))
    (`scoring/dpo.py`); `sigmoid_loss` = mean −log σ(m), TRL 1.16's `loss_type="sigmoid"` (which
    ignores label_smoothing), named so because it is the training loss only under that loss type;
    accuracy = share with m > 0. The last logged training window can be a single batch. `ld_alpha`:
    DPOConfig's, as in `scored` (both sides' sums LD-weighted).
    """
    import polars as pl
    import torch

    from sdpo_kit.scoring.cache import score_frame_cached
    from sdpo_kit.scoring.dpo import reward_margin, sigmoid_loss

    model.eval()  # no dropout in a measurement
    columns = [c for c in ("pair_id", "prompt", "chosen", "rejected", "tools", "chat_template_kwargs")
               if c in scored.columns]
    policy, _ = score_frame_cached(scored.select(columns), model, tokenizer, scorer, file="end_of_step",
                                   accelerator=state, progress=False)
    policy = ld_weighted(policy, ld_alpha)  # the same sums as the reference in `scored` (TRL's ld_alpha)
    joined = scored.select("pair_id", *REF_COLUMNS).join(
        policy.select("pair_id", pl.col("ref_chosen_logps").alias("pc"), pl.col("ref_rejected_logps").alias("pr")),
        on="pair_id", how="inner")
    t = {c: torch.tensor(joined[c].to_list(), dtype=torch.float64) for c in ("pc", "pr", *REF_COLUMNS)}
    m = reward_margin(t["pc"], t["pr"], t["ref_chosen_logps"], t["ref_rejected_logps"], scorer.beta)
    return {"pairs": joined.height, "sigmoid_loss": float(sigmoid_loss(m).mean()), "reward_margin": float(m.mean()),
            "reward_accuracy": float((m > 0).double().mean())}


def step_summary(step: int, scored, trainer, seconds: float, ref_fp: str, model_fp: str, rejects: int,
              end: dict | None, reference_check: dict | None, tolerance: float) -> dict:
    """`summary.json` of one step.

    `sigmoid_loss_end`, `reward_margin_end`, `reward_accuracy_end`: over the whole partition after
    the step (`end`, from `end_of_step`); without `end`, `loss_end` = the last logged training
    window's loss (older runs; `sdpo_kit.runs.read_step_summary` reads both).
    `loss_first` is the first logged loss (ln 2: the policy starts as its reference).
    `reference_exact`: the first step's |rewards| are at most `tolerance` (`reference.FIRST_STEP_TOLERANCE`,
    float32 and autocast alike), or the re-score check of a reference that is not the start passed.
    """
    logs = trainer.state.log_history
    losses = [e["loss"] for e in logs if "loss" in e]
    last = next((e for e in reversed(logs) if "rewards/margins" in e), {})
    first = next((e for e in logs if "rewards/chosen" in e), {})
    # At the first optimisation step the policy IS the reference, so its rewards must be ~0; a
    # larger value means the precomputed reference came from other weights or settings.
    drift = max(abs(first.get("rewards/chosen", 0.0)), abs(first.get("rewards/rejected", 0.0)))
    if reference_check is not None:  # reference != start (fixed/mix schedules): rewards start away from 0
        drift = 0.0 if reference_check["exact"] else float("inf")
    elif drift > tolerance:
        note("sdpo train", f"WARNING step {step}: first-step rewards {drift:.3g} != 0 (tolerance {tolerance:.3g}): "
             "the reference log-probs do not match the starting weights")
    end_values = {"reward_margin_end": end["reward_margin"], "reward_accuracy_end": end["reward_accuracy"],
                  "sigmoid_loss_end": end["sigmoid_loss"]} if end else {
        "reward_margin_end": last.get("rewards/margins"), "reward_accuracy_end": last.get("rewards/accuracies"),
        "loss_end": losses[-1] if losses else None}
    return {
        "reference_exact": drift <= tolerance,
        "reference_check": reference_check or {"kind": "first_step_rewards_zero", "drift": drift, "tolerance": tolerance},
        "step": step,
        "pairs": scored.height,
        "rejected": rejects,
        "optimizer_steps": trainer.state.global_step,
        "ref_margin_mean": float(scored["margin"].mean()) if scored.height else None,
        "ref_accuracy": float((scored["margin"] > 0).mean()) if scored.height else None,
        "reward_margin_end": end_values["reward_margin_end"],
        "reward_accuracy_end": end_values["reward_accuracy_end"],
        "loss_first": losses[0] if losses else None,
        **{k: v for k, v in end_values.items() if k.endswith("loss_end")},
        "end_over": "partition" if end else "last_logged_window",
        "end_pairs": end["pairs"] if end else None,
        "train_loss": next((e["train_loss"] for e in reversed(logs) if "train_loss" in e), None),
        "seconds": round(seconds, 2),
        "reference_fingerprint": ref_fp,
        "model_fingerprint": model_fp,
    }
