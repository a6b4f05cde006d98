"""Cross-fitting's parts: folds by prompt, one (seed, fold) run, its record, and the per-pair difficulty.

    python -c "from sdpo_kit.curate.folds import assign_folds; print(assign_folds(['a', 'b', 'a', 'c'], 2, 0))"

`sdpo curate crossfit` (`curate/crossfit.py`) drives these. A run trains plain DPO on every fold but
one with the trainer (`sdpo_kit.training.loop.train_stepwise`, `--mode dpo`), then the scorer gives the
held-out fold's summed log-probs under the trained model M; with S's log-probs (the same scorer,
settings and pair cache) that is the implicit reward margin m = β((π_w − r_w) − (π_l − r_l)) of
`sdpo_kit.scoring.dpo`. `record.json` is written last: a run folder without it is redone from scratch.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from sdpo_kit.errors import InputError
from sdpo_kit.io import read_json, sha256_file, write_json, write_parquet

MARGINS = "crossfit_margins"  # per-run implicit reward margins, one per seed (null: the scorer dropped the pair)
ADDED = ("val_loss", "val_loss_sd", "learned_share", "n_runs", MARGINS)


def assign_folds(keys: list[str], folds: int, seed: int) -> np.ndarray:
    """Fold (0..folds-1) of each row: its key's place in a seeded permutation of the distinct sorted keys,
    taken round-robin, so every key (prompt) sits in one fold and the folds differ by at most one key."""
    distinct = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(distinct))
    fold_of = {distinct[i]: rank % folds for rank, i in enumerate(order)}
    return np.array([fold_of[k] for k in keys], dtype=np.int64)


def run_name(seed_index: int, fold: int) -> str:
    return f"seed{seed_index}_fold{fold}"


def run_done(folder: Path) -> dict | None:
    """The run's record if it finished (record.json written last, its held-out file unchanged), else None."""
    try:
        record = read_json(folder / "record.json")
        return record if record["heldout_sha256"] == sha256_file(folder / "heldout.parquet") else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def train_fold(folder: Path, train: pl.DataFrame, scorer_meta: dict | None, step_cfg: dict, args) -> Path:
    """Plain DPO of S on `train` into `folder/run` (a fresh start: half-done runs are removed first)."""
    from sdpo_kit.training.config import StepwiseConfig, prepare
    from sdpo_kit.training.loop import train_stepwise

    shutil.rmtree(folder, ignore_errors=True)
    parts = folder / "parts"
    parts.mkdir(parents=True)
    write_parquet(parts / "step_1.parquet", train)
    write_json(parts / "manifest.json", {"strategy": "crossfit", "steps": [
        {"step": 1, "file": "step_1.parquet", "pairs": train.height}], "scorer": scorer_meta})
    cfg = StepwiseConfig(**{**step_cfg, "partitions": str(parts), "out": str(folder / "run"), "mode": "dpo",
                            "resume": False})
    args = copy.deepcopy(args)
    prepare(cfg, args, given=set(step_cfg) | {"max_length", "truncation_mode"})
    return train_stepwise(cfg, args, given=set())


def score_fold(run_dir: Path, heldout: pl.DataFrame, s_scores: pl.DataFrame, score_cfg, beta: float) -> pl.DataFrame:
    """pair_id, policy_chosen_logps, policy_rejected_logps, reward_margin of the held-out pairs under M vs S."""
    from sdpo_kit.models import load_checked_model
    from sdpo_kit.scoring.cache import score_frame_cached
    from sdpo_kit.scoring.dpo import reward_margin

    model, tokenizer = load_checked_model(run_dir / "step_1" / "model")
    scored, _ = score_frame_cached(heldout, model, tokenizer, score_cfg, progress=False)
    del model
    policy = scored.select("pair_id", pl.col("ref_chosen_logps").alias("policy_chosen_logps"),
                           pl.col("ref_rejected_logps").alias("policy_rejected_logps"))
    both = policy.join(s_scores, on="pair_id", how="inner", maintain_order="left")
    return both.select("pair_id", "policy_chosen_logps", "policy_rejected_logps", reward_margin(
        pl.col("policy_chosen_logps"), pl.col("policy_rejected_logps"), pl.col("ref_chosen_logps"),
        pl.col("ref_rejected_logps"), beta).alias("reward_margin"))


def finish_run(folder: Path, record: dict, margins: pl.DataFrame, keep_model: bool) -> dict:
    """Check the run never scored a pair it trained on, then write heldout.parquet and record.json (last)."""
    trained = set(record["trained_pair_ids"])
    leaked = [p for p in margins["pair_id"].to_list() if p in trained]
    if leaked:  # a bug, not the user's: the folds would be meaningless
        raise RuntimeError(f"{folder.name}: scored {len(leaked)} pair(s) it trained on, e.g. {leaked[0]}")
    write_parquet(folder / "heldout.parquet", margins)
    record = {**record, "scored_pair_ids": margins["pair_id"].to_list(),
              "heldout_sha256": sha256_file(folder / "heldout.parquet")}
    if not keep_model:  # ~4 bytes a weight per run; the record keeps its fingerprint
        shutil.rmtree(folder / "run" / "step_1" / "model", ignore_errors=True)
    write_json(folder / "record.json", record)
    return record


def trained_ids(run_dir: Path) -> list[str]:
    """The pair ids the run trained on, read from the partition files its run.json names."""
    from sdpo_kit.io import read_parquet_checked
    from sdpo_kit.runs import read_run

    files = read_run(run_dir)["steps"][0]["partition"]
    return [p for f in files for p in read_parquet_checked(f, columns=["pair_id"])["pair_id"].to_list()]


def check_disjoint(records: list[dict]) -> None:
    """Before the output is written: no run scored a pair it trained on (from the recorded ids)."""
    for r in records:
        both = set(r["trained_pair_ids"]) & set(r["scored_pair_ids"])
        if both:
            raise InputError(f"seed {r['seed_index']} fold {r['fold']}", f"scored {len(both)} pair(s) it trained on "
                             f"(e.g. {sorted(both)[0]}); its run folder is damaged: delete it and rerun")


def difficulty(pair_ids: list[str], runs: list[tuple[int, pl.DataFrame]], seeds: int) -> pl.DataFrame:
    """Per pair (in `pair_ids` order): val_loss = mean over runs of the held-out margin's −log σ(m) (TRL 1.16's
    sigmoid loss, which ignores label_smoothing), val_loss_sd (sample sd; null with one run), learned_share
    (share of runs with margin > 0), n_runs, and the per-seed margins. `runs`: (seed index, pair_id +
    reward_margin frame)."""
    from sdpo_kit.scoring.dpo import sigmoid_loss

    table = np.full((len(pair_ids), seeds), np.nan)
    where = {p: i for i, p in enumerate(pair_ids)}
    for s, frame in runs:
        for p, m in zip(frame["pair_id"].to_list(), frame["reward_margin"].to_list()):
            table[where[p], s] = m
    seen = ~np.isnan(table)
    n = seen.sum(axis=1)
    loss = np.where(seen, sigmoid_loss(np.where(seen, table, 0.0)), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(loss, axis=1) / np.maximum(n, 1), np.nan)
        sd = np.where(n > 1, np.sqrt(np.nansum((loss - mean[:, None]) ** 2, axis=1) / np.maximum(n - 1, 1)), np.nan)
        learned = np.where(n > 0, (seen & (np.nan_to_num(table) > 0)).sum(axis=1) / np.maximum(n, 1), np.nan)
    margins = [[None if np.isnan(v) else float(v) for v in row] for row in table]
    return pl.DataFrame({"pair_id": pair_ids, "val_loss": mean, "val_loss_sd": sd, "learned_share": learned,
                         "n_runs": n.astype(np.int64), MARGINS: margins},
                        schema_overrides={MARGINS: pl.List(pl.Float64)}).fill_nan(None)


def seed_agreement(frame: pl.DataFrame, seeds: int) -> list[dict]:
    """Spearman ρ of the per-seed val_loss between every two seeds (each pair is held out once per seed)."""
    from sdpo_kit.scoring.dpo import sigmoid_loss
    from sdpo_kit.stats import spearman

    per_seed = np.array([[np.nan if v is None else v for v in row] for row in frame[MARGINS].to_list()]).reshape(-1, seeds)
    loss = sigmoid_loss(per_seed)
    return [{"seeds": [a, b], "spearman": spearman(loss[:, a], loss[:, b])}
            for a in range(seeds) for b in range(a + 1, seeds)]


def digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()
