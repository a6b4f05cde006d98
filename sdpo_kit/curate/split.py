"""Split scored pairs into T partitions, easiest first: the curation half of sDPO.

    sdpo curate split scored.parquet --steps 3 --strategy easy-to-hard --out partitions/

Difficulty is the reference model's margin γ_ref = log π(y_w|x) - log π(y_l|x) (column
`margin`, or `--by` another score column such as `margin_per_token`): a large margin means the
reference already prefers the chosen answer, so the pair is easy and goes to an early step.
`by-source` is the paper's method (Kim et al. 2024): one partition per source, ordered by the
reference's reward accuracy on it (share of pairs with γ_ref > 0), highest first. `random` is
the paper's control. Every input pair lands in exactly one step or in `dropped.parquet`.
This module is the file job (reading the scored file, the manifest, writing); how to split
(`SplitConfig`) and the strategies themselves, on a frame, are `strategies.py`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from sdpo_kit.curate.selection import selection_lines, selection_record
from sdpo_kit.curate.strategies import SplitConfig, order_column, source_order, split_frame
from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import finite_json, read_json_meta, read_parquet_checked, sha256_file, write_json, write_parquet
from sdpo_kit.runs import SCORER_KEY, SPLIT_KEY, STEP_KEY
from sdpo_kit.signals import signal_record

@dataclass
class SplitFileConfig:
    """Order or bucket scored pairs into easy-to-hard partitions, with a manifest and a data card.

    How to split (strategy, steps, by, ...: `SplitConfig`, recorded in manifest.json) comes after these.
    """

    scored: str = field(metadata={"help": "Scored parquet (output of `sdpo curate score`).", "positional": True})
    out: str = field(metadata={"help": "Partitions directory to write."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty --out directory."})


def run(cfg: SplitFileConfig, split: SplitConfig) -> dict:
    """`sdpo curate split`: write the partitions; print one line per step, the drops and the length check."""
    from sdpo_kit.escape import term

    manifest = split_file(cfg.scored, cfg.out, split, overwrite=cfg.overwrite)  # errors: the CLI answers them
    num = lambda v: "n/a (not finite)" if v is None else f"{v:.3f}"  # noqa: E731  (strict JSON: inf -> null)
    for s in manifest["steps"]:
        mix = ", ".join(f"{term(k)} {v}" for k, v in s["sources"].items())  # source names are data
        print(f"step {s['step']}: {s['pairs']} pairs, mean margin {num(s['mean_margin'])}, "
              f"reward accuracy {num(s['reward_accuracy'])} ({mix})")
    print(f"dropped: {manifest['dropped']['pairs']} {manifest['dropped']['reasons']}")
    for line in selection_lines(manifest["selection"]):
        print(line)
    if manifest.get("length"):
        from sdpo_kit.length import split_lines

        for line in split_lines(manifest["length"]):
            print(line)
    print(f"wrote {cfg.out}/ (step_*.parquet, dropped.parquet, manifest.json, README.md, plots/)")
    return manifest


def _step_entry(part: pl.DataFrame, step: int) -> dict:
    from sdpo_kit.stats import margin_stats

    stats = part.select(margin_stats(median=True)).row(0, named=True)
    sources = part["source"].value_counts().sort(["count", "source"], descending=[True, False])
    return {"step": step, "file": f"step_{step}.parquet", "pairs": part.height,
            **{k: round(float(v), 6) for k, v in stats.items() if k != "pairs"},
            "sources": dict(zip(sources["source"].to_list(), sources["count"].to_list()))}


def read_scored(path: str | os.PathLike, cfg: SplitConfig) -> tuple[pl.DataFrame, dict | None]:
    """The scored frame and the scorer's provenance; one clear error for every way it can be wrong."""
    df = read_parquet_checked(path, "curate split takes the parquet that `sdpo curate score` writes; run it first")
    needed = ["prompt", "chosen", "rejected", "source", "margin"]
    needed += ["chosen_truncated", "rejected_truncated"] if cfg.drop_truncated else []
    needed += ["chosen_tokens", "rejected_tokens"] if cfg.control_length or "length" in cfg.strata() else []
    missing = [c for c in dict.fromkeys(needed) if c not in df.columns]
    if cfg.by not in df.columns and "margin" not in missing:  # scored, but --by names no column
        raise UsageError(f"--by {cfg.by!r}", f"no such column in {path}; numeric columns: {_numeric(df)}")
    if missing or cfg.by not in df.columns:
        raise InputError(f"{path}: missing column(s) {missing or [cfg.by]}; run `sdpo curate score` on it first")
    if not df["margin"].dtype.is_numeric():
        raise InputError(path, f"column 'margin' is {df['margin'].dtype}, not numbers: not written by "
                         "`sdpo curate score`; score the pairs again")
    if not df[cfg.by].dtype.is_numeric():
        raise UsageError(f"--by {cfg.by!r}", f"is a {df[cfg.by].dtype} column, not a score; numeric columns: {_numeric(df)}")
    for col in ("chosen_truncated", "rejected_truncated") if cfg.drop_truncated else ():
        if df[col].dtype != pl.Boolean:
            raise InputError(path, f"column {col!r} is {df[col].dtype}, expected booleans; score the pairs again")
    if df.height == 0:
        raise InputError(path, "holds no pairs")
    return df, read_json_meta(path, SCORER_KEY)


def _numeric(df: pl.DataFrame) -> str:
    return ", ".join(c for c, t in df.schema.items() if t.is_numeric()) or "none"






def split_file(path: str | os.PathLike, out: str | os.PathLike, cfg: SplitConfig, overwrite: bool = False) -> dict:
    """Split a scored parquet into `out/` (steps, dropped, manifest, card, plots); returns the manifest."""
    from sdpo_kit.io import folder_lock
    from sdpo_kit.owner import claim_folder

    out = Path(out)
    with folder_lock(out, COMMAND):  # one writer; never over the input nor another command's folder
        claim_folder(out, COMMAND, overwrite, inputs=[path])
        return _split_file(Path(path), out, cfg)


COMMAND = "sdpo curate split"


def _split_file(path: Path, out: Path, cfg: SplitConfig) -> dict:
    df, scorer = read_scored(path, cfg)
    control: dict = {}
    parts, dropped = split_frame(df, cfg, control)
    params = {k: v for k, v in asdict(cfg).items() if k not in ("strategy", "seed")}
    params["steps"] = len(parts)
    params["fractions"] = list(cfg.fractions) if cfg.fractions else None
    if cfg.strategy == "by-source":
        params["source_order"] = source_order(pl.concat(parts)).to_dicts()
    reasons = dropped["drop_reason"].value_counts().sort("drop_reason")
    manifest = {
        "strategy": cfg.strategy,
        "params": params,
        "seed": cfg.seed,
        "steps": [_step_entry(p, t + 1) for t, p in enumerate(parts)],
        "dropped": {"file": "dropped.parquet", "pairs": dropped.height,
                    "reasons": dict(zip(reasons["drop_reason"].to_list(), reasons["count"].to_list()))},
        "input": {"path": str(path), "sha256": sha256_file(path), "rows": df.height},
        "scorer": scorer,
    }
    manifest["length"] = _length_record(parts, cfg, control.get("control_length"))
    manifest["selection"] = selection_record(df, parts)
    # Every difficulty signal side by side, over every input pair (kept or dropped; `<by>_lc` included).
    manifest["signals"] = signal_record(pl.concat([*parts, dropped], how="diagonal_relaxed"))
    # Strict JSON: an inf/nan statistic (e.g. an infinite margin) becomes null, and the manifest says how many.
    manifest, non_finite = finite_json(manifest)
    manifest["non_finite_values"] = non_finite
    meta = {SPLIT_KEY: json.dumps({"strategy": cfg.strategy, "params": params, "seed": cfg.seed}, sort_keys=True)}
    if scorer is not None:
        meta[SCORER_KEY] = json.dumps(scorer, sort_keys=True)
    _write_outputs(out, parts, dropped, manifest, meta)
    return manifest


def _length_record(parts: list[pl.DataFrame], cfg: SplitConfig, control: dict | None) -> dict | None:
    """manifest["length"] (sdpo_kit.length.split_record); None when the input has no token counts."""
    from sdpo_kit import length

    data = pl.concat([p.with_columns(pl.lit(t, pl.Int32).alias("step")) for t, p in enumerate(parts, 1)],
                     how="diagonal_relaxed")
    if not length.has_lengths(data):
        return None
    key = None if cfg.strategy in ("by-source", "random") else order_column(cfg)
    return length.split_record(data, key, control)


def _write_outputs(out: Path, parts, dropped, manifest: dict, meta: dict) -> None:
    """Write everything into a sibling temp dir, then swap it in: a crash leaves `out` untouched.
    The manifest records each file's sha256 (`sdpo train` checks them: runs.check_partitions)."""
    from sdpo_kit.io import atomic_dir
    from sdpo_kit.owner import write_owner
    from sdpo_kit.curate.card import write_partition_card

    with atomic_dir(out, overwrite=True) as tmp:  # split_file's claim_folder decided on --overwrite
        for t, part in enumerate(parts, start=1):
            write_parquet(tmp / f"step_{t}.parquet", part, metadata={**meta, STEP_KEY: str(t)})
            manifest["steps"][t - 1]["sha256"] = sha256_file(tmp / f"step_{t}.parquet")
        write_parquet(tmp / "dropped.parquet", dropped, metadata=meta)
        manifest["dropped"]["sha256"] = sha256_file(tmp / "dropped.parquet")
        write_owner(tmp, COMMAND, input=str(Path(manifest["input"]["path"]).resolve()))
        write_json(tmp / "manifest.json", manifest)
        write_partition_card(tmp, parts, manifest)
