"""Score a whole preference file: shards, a per-pair cache, resume after a crash, accelerate.

    sdpo curate score data/dpo_en_demo.json --model default --limit 32 --out /tmp/scored.parquet
    accelerate launch --num_processes 2 --cpu --no_python sdpo curate score DATA --model default --out X.parquet

The input is read in chunks of `shard_rows` rows (`sdpo_kit.data.iter_pairs`); chunk k becomes
`X.parquet.parts/shard_k.parquet` (+ its rejects), written atomically, so memory stays flat and a
killed run redoes at most the chunks it was inside. Under accelerate, process r takes the chunks
k with k % N == r; the main process merges the shards in chunk order, so the output does not
depend on N. Finished pairs also go to a cache under `$SDPO_KIT_CACHE/scores/<key>/` keyed by
(pair_id; weights fingerprints, chat template, settings), so scoring the same pairs again,
from any file, costs no forward pass.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path

import polars as pl

from sdpo_kit.score import POLICY_COLUMNS, SCORED_COLUMNS, ScoreConfig, provenance, score_frame

META_KEY = "sdpo_kit.scorer"


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def cache_key(meta: dict) -> str:
    """Digest of everything that changes the numbers (library versions left out on purpose)."""
    drop = ("versions", "model", "input")
    keep = {k: {f: v for f, v in m.items() if f not in drop} if isinstance(m, dict) else m
            for k, m in meta.items() if k not in drop}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


class PairCache:
    """pair_id -> scored columns (or the reject detail), as parquet files in one folder per key."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def get(self, ids: list[str]) -> pl.DataFrame | None:
        if self.folder is None or not any(self.folder.glob("*.parquet")):
            return None
        found = pl.scan_parquet(self.folder / "*.parquet").filter(pl.col("pair_id").is_in(ids)).collect()
        return found.unique("pair_id", keep="first", maintain_order=True)

    def put(self, entries: pl.DataFrame) -> None:
        if self.folder is not None and entries.height:
            from sdpo_kit.io import write_parquet

            write_parquet(self.folder / f"{uuid.uuid4().hex}.parquet", entries)


def _kept_rows(data: Path, start: int, chunk) -> list[int]:
    """1-based input rows of a chunk's pairs: its row range minus the data layer's rejects."""
    if data.is_dir():  # rows restart in every file: use the pair's position in the input instead
        return [start + i + 1 for i in range(chunk.pairs.height)]
    dropped = {r.row for r in chunk.rejects}
    return [r for r in range(start + 1, start + chunk.rows + 1) if r not in dropped][: chunk.pairs.height]


def _score_chunk(pairs: pl.DataFrame, rows: list[int], models, tokenizer, config, cache: PairCache, bar, file: str,
                 accelerator=None):
    """Scored frame and rejects of one chunk; pairs found in the cache skip the forward pass."""
    from sdpo_kit.data import Reject

    cached = cache.get(pairs["pair_id"].to_list())
    known = set() if cached is None else set(cached["pair_id"])
    todo = pairs.filter(~pl.col("pair_id").is_in(list(known)))
    tables = [] if cached is None else [cached]
    if todo.height:
        scored, rejects = score_frame(todo, models[0], tokenizer, config, policy=models[1] if len(models) > 1 else None,
                                      progress=bar or False, file=file, accelerator=accelerator)
        fresh = pl.concat([scored.select(["pair_id", *_score_cols(scored)]),
                           pl.DataFrame({"pair_id": [todo["pair_id"][r.row - 1] for r in rejects],
                                         "_reject": [r.detail for r in rejects]},
                                        schema={"pair_id": pl.String, "_reject": pl.String})],
                          how="diagonal_relaxed")
        if accelerator is None or accelerator.is_main_process:  # every process holds the gathered whole
            cache.put(fresh)
        tables.append(fresh)
    if bar is not None:
        bar.update(pairs.height - todo.height + (len(rejects) if todo.height else 0))
    table = pl.concat(tables, how="diagonal_relaxed").unique("pair_id", keep="first", maintain_order=True)
    if "_reject" not in table.columns:
        table = table.with_columns(pl.lit(None, pl.String).alias("_reject"))
    stale = [c for c in table.columns if c != "pair_id" and c in pairs.columns]  # e.g. a scored partition
    joined = pairs.drop(stale).with_columns(pl.Series("_row", rows, dtype=pl.Int64)).join(
        table, on="pair_id", how="left", maintain_order="left")
    bad = joined["_reject"].is_not_null()
    rejects = [Reject(file, r["_row"], "prompt_too_long", r["_reject"],
                      {k: r[k] for k in ("pair_id", "prompt", "chosen", "rejected")})
               for r in joined.filter(bad).iter_rows(named=True)]
    return joined.filter(~bad).drop("_row", "_reject"), rejects


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
        return _score_chunk(pairs, rows, [model], tokenizer, config, store, bar, file, accelerator)
    finally:
        if bar is not None:
            bar.close()


def score_file(data, out, *, model="default", config: ScoreConfig | None = None, policy=None, resume: bool = True,
               limit: int | None = None, format: str | None = None, columns: dict | None = None,
               shard_rows: int = 512, cache: bool = True, progress: bool = True) -> Path:
    """Score every pair of `data` with `model` (the reference; `policy` optional) into `out`.

    Writes `out` (scored columns, provenance under the parquet metadata key `sdpo_kit.scorer`)
    and its rejects file (the data layer's rejects and `prompt_too_long`), returns `out`.
    `resume=False` discards finished shards of an earlier run; `cache=False` bypasses the cache.
    """
    from accelerate import PartialState

    from sdpo_kit.console import main_process
    from sdpo_kit.data import iter_pairs
    from sdpo_kit.models import cache_dir, load_model

    config = config or ScoreConfig()
    data, out, state = Path(data), Path(out), PartialState()
    device = None if state.device.type == "cpu" else str(state.device)
    models = [load_model(model, config.dtype, device)]
    if policy is not None:
        models.append(load_model(policy, config.dtype, device))
    tokenizer = models[0][1]
    meta = provenance(*models[0], config)  # the reference's, at the top level (docs/ARCHITECTURE.md)
    if policy is not None:
        meta |= {"policy": provenance(*models[1], config), "beta": config.beta}
    key = cache_key(meta)
    parts = _prepare_parts(out, key, resume, state)
    store = PairCache(cache_dir() / "scores" / key if cache else None)
    read = {"format": format, "columns": columns, "limit": limit}
    mine = lambda k: k % state.num_processes == state.process_index  # noqa: E731
    bar = _bar(data, read, shard_rows, mine, progress and state.is_main_process and main_process())
    start = 0
    for k, chunk in enumerate(iter_pairs(data, batch_rows=shard_rows, **read)):
        shard, rows = parts / f"shard_{k:06d}.parquet", _kept_rows(data, start, chunk)
        start += chunk.rows
        if not mine(k) or shard.exists():
            bar and mine(k) and bar.update(chunk.pairs.height)
            continue
        scored, rejects = _score_chunk(chunk.pairs, rows, [m for m, _ in models], tokenizer, config, store, bar,
                                       str(data))
        _write_shard(shard, scored, chunk.rejects + rejects)
    bar and bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        meta["input"] = {"path": str(data), "format": format, "limit": limit}
        _merge(parts, out, meta)
    state.wait_for_everyone()
    return out


def _prepare_parts(out: Path, key: str, resume: bool, state) -> Path:
    """The shard folder of `out`, emptied unless it holds a resumable run with the same key."""
    from sdpo_kit.io import read_json, write_json

    parts = parts_dir(out)
    if state.is_main_process:
        stamp = parts / "run.json"
        if parts.exists() and (not resume or not stamp.exists() or read_json(stamp).get("key") != key):
            shutil.rmtree(parts)
        parts.mkdir(parents=True, exist_ok=True)
        write_json(stamp, {"key": key})
    state.wait_for_everyone()
    return parts


def _bar(data, read, shard_rows, mine, enabled):
    """A pairs/s + ETA bar; its total comes from a quick pass over the input (no model)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    from sdpo_kit.data import iter_pairs

    total = sum(c.pairs.height for k, c in enumerate(iter_pairs(data, batch_rows=shard_rows, **read)) if mine(k))
    return tqdm(total=total, unit="pair", desc="scoring", dynamic_ncols=True, smoothing=0.1)


def _write_shard(shard: Path, scored: pl.DataFrame, rejects: list) -> None:
    from sdpo_kit.data import write_rejects
    from sdpo_kit.io import write_parquet

    write_rejects(rejects, shard.with_suffix(".rejects.jsonl"))  # first: the parquet marks the shard done
    write_parquet(shard, scored)


def _merge(parts: Path, out: Path, meta: dict) -> None:
    """Concatenate the shards in order into `out` (streamed, atomic) and their rejects beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sdpo_kit.data import rejects_path
    from sdpo_kit.io import atomic_path

    shards = sorted(parts.glob("shard_*.parquet"))
    if not shards:
        raise ValueError(f"{meta['input']['path']}: no rows to score")
    schema = pa.unify_schemas([pq.read_schema(f) for f in shards], promote_options="permissive")
    schema = schema.with_metadata({META_KEY: json.dumps(meta)})
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for f in shards:
            table = pq.read_table(f)
            for name in schema.names:
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
            writer.write_table(table.select(schema.names).cast(schema))
    with atomic_path(rejects_path(out)) as tmp, open(tmp, "w", encoding="utf-8") as w:
        for f in shards:
            w.write(f.with_suffix(".rejects.jsonl").read_text(encoding="utf-8"))
    shutil.rmtree(parts)


def summary(out: Path) -> str:
    """What `sdpo curate score` prints: where the scores and the rejects went, with counts."""
    from collections import Counter

    import pyarrow.parquet as pq

    from sdpo_kit.data import rejects_path

    rejects = rejects_path(out)
    reasons = Counter(json.loads(line)["reason"] for line in rejects.read_text(encoding="utf-8").splitlines() if line)
    why = ", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "none"
    return (f"scored {pq.read_metadata(out).num_rows} pairs -> {out}\n"
            f"rejected {sum(reasons.values())} ({why}) -> {rejects}")
