"""The pair cache: scored pairs keyed by (pair_id; weights fingerprint, chat template, settings).

    python -c "from sdpo_kit.scoring.cache import cache_key; print(cache_key({'fingerprint': 'x', 'max_length': 256}))"

Finished pairs go to `$SDPO_KIT_CACHE/scores/<key>/`, so scoring the same pairs again, from any
file or job, costs no forward pass: the trainer's step-1 reference comes straight from what
`sdpo curate score` computed with S (`score_frame_cached`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from sdpo_kit.console import say
from sdpo_kit.io import sha256_file
from sdpo_kit.scoring.frame import POLICY_COLUMNS, SCORED_COLUMNS, ScoreConfig, provenance, score_frame


def cache_key(meta: dict) -> str:
    """Digest of everything that changes the numbers (library versions left out on purpose)."""
    drop = ("versions", "model", "input")
    keep = {k: {f: v for f, v in m.items() if f not in drop} if isinstance(m, dict) else m
            for k, m in meta.items() if k not in drop}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class PairCache:
    """pair_id -> scored columns (or the reject detail), as parquet files in one folder per key.

    Each file is named by the sha256 of its bytes; the first `get` checks every file once (a
    read check, and the checksum where the name carries one) and removes a truncated or corrupt
    one with a line on stderr, so its pairs are scored again instead of every later run crashing."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.checked = False

    def get(self, ids: list[str]) -> pl.DataFrame | None:
        if self.folder is None or not any(self.folder.glob("*.parquet")):
            return None
        if not self.checked:
            self.checked = True
            for bad, why in check_files(sorted(self.folder.glob("*.parquet"))):
                say(f"score cache: {bad} is {why}; removed, its pairs will be scored again")
                bad.unlink(missing_ok=True)
            if not any(self.folder.glob("*.parquet")):
                return None
        found = pl.scan_parquet(self.folder / "*.parquet").filter(pl.col("pair_id").is_in(ids)).collect()
        return found.unique("pair_id", keep="first", maintain_order=True)

    def put(self, entries: pl.DataFrame) -> None:
        if self.folder is not None and entries.height:
            import io

            from sdpo_kit.io import atomic_path

            buf = io.BytesIO()
            entries.write_parquet(buf)
            data = buf.getvalue()
            with atomic_path(self.folder / f"{hashlib.sha256(data).hexdigest()[:HASH_CHARS]}.parquet") as tmp:
                tmp.write_bytes(data)


HASH_CHARS = 32  # sha256 hex characters in a checksummed file's name


def check_files(files: list[Path]) -> list[tuple[Path, str]]:
    """(file, what is wrong) for each parquet file that is truncated, unreadable or fails its checksum."""
    import re

    import pyarrow.parquet as pq

    bad = []
    for f in files:
        try:
            if re.fullmatch(f"[0-9a-f]{{{HASH_CHARS}}}", f.stem) and sha256_file(f)[:HASH_CHARS] != f.stem:
                bad.append((f, "corrupt (checksum mismatch)"))
                continue
            pq.read_metadata(f)
        except FileNotFoundError:
            continue  # another process removed it first
        except Exception as err:  # noqa: BLE001  (any reader error means the same: unusable)
            first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            bad.append((f, f"truncated or corrupt ({first})"))
    return bad


def score_chunk(pairs: pl.DataFrame, rows: list[int], models, tokenizer, config, cache: PairCache, bar, file: str,
                 accelerator=None):
    """Scored frame and rejects of one chunk; pairs found in the cache skip the forward pass."""
    from sdpo_kit.data import Reject

    if pairs.height == 0:  # every row of the chunk was a data-layer reject: nothing to score or join
        return pairs, []
    cached = cache.get(pairs["pair_id"].to_list())
    known = set() if cached is None else set(cached["pair_id"])
    todo = pairs.filter(~pl.col("pair_id").is_in(list(known)))
    tables = [] if cached is None else [cached]
    if todo.height:
        scored, rejects = score_frame(todo, models[0], tokenizer, config, policy=models[1] if len(models) > 1 else None,
                                      progress=bar or False, file=file, accelerator=accelerator)
        fresh = pl.concat([scored.select(["pair_id", *_score_cols(scored)]),
                           pl.DataFrame({"pair_id": [todo["pair_id"][r.row - 1] for r in rejects],
                                         "_reject": [r.detail for r in rejects],
                                         "_reason": [r.reason for r in rejects]},
                                        schema={"pair_id": pl.String, "_reject": pl.String, "_reason": pl.String})],
                          how="diagonal_relaxed")
        if accelerator is None or accelerator.is_main_process:  # every process holds the gathered whole
            cache.put(fresh)
        tables.append(fresh)
    if bar is not None:
        bar.update(pairs.height - todo.height + (len(rejects) if todo.height else 0))
    table = pl.concat(tables, how="diagonal_relaxed").unique("pair_id", keep="first", maintain_order=True)
    for col in ("_reject", "_reason"):  # `_reason` since scored_layout 3; before, every reject was prompt_too_long
        if col not in table.columns:
            table = table.with_columns(pl.lit(None, pl.String).alias(col))
    stale = [c for c in table.columns if c != "pair_id" and c in pairs.columns]  # e.g. a scored partition
    joined = pairs.drop(stale).with_columns(pl.Series("_row", rows, dtype=pl.Int64)).join(
        table, on="pair_id", how="left", maintain_order="left")
    bad = joined["_reject"].is_not_null()
    rejects = [Reject(file, r["_row"], r["_reason"] or "prompt_too_long", r["_reject"],
                      {k: r[k] for k in ("pair_id", "prompt", "chosen", "rejected")})
               for r in joined.filter(bad).iter_rows(named=True)]
    return joined.filter(~bad).drop("_row", "_reject", "_reason"), rejects


def _score_cols(frame: pl.DataFrame) -> list[str]:
    return [c for c in (*SCORED_COLUMNS, *POLICY_COLUMNS) if c in frame.columns]


def score_frame_cached(pairs: pl.DataFrame, model, tokenizer, config: ScoreConfig, *, file: str = "",
                       accelerator=None, progress: bool = True):
    """`score_frame` of `model` through the pair cache that `sdpo curate score` fills.

    The trainer scores partition t with M_{t-1}; for step 1 that is S with the curation settings,
    so the pairs come straight from the cache instead of a second forward pass.
    Returns `(scored, rejects)` like `score_frame`, rows numbered by position in `pairs`.
    """
    from tqdm.auto import tqdm

    from sdpo_kit.models import cache_dir

    store = PairCache(cache_dir() / "scores" / cache_key(provenance(model, tokenizer, config)))
    rows = list(range(1, pairs.height + 1))
    bar = tqdm(total=pairs.height, desc="scoring reference", unit="pair") if progress else None
    try:
        return score_chunk(pairs, rows, [model], tokenizer, config, store, bar, file, accelerator)
    finally:
        if bar is not None:
            bar.close()
