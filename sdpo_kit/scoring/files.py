"""Scoring a whole file: shards, the pair cache, resume, accelerate (`sdpo curate score`, `sdpo eval`).

    python -c "from sdpo_kit.scoring.files import ScoreFileConfig, score_file; score_file(ScoreFileConfig('data/dpo_en_demo.json', '/tmp/s.parquet', limit=4))"

The input is read in chunks of `shard_rows` rows (`sdpo_kit.data.iter_pairs`); chunk k becomes
`X.parquet.parts/shard_k.parquet` (+ its rejects), written atomically, so memory stays flat and a
killed run redoes at most the chunks it was inside. Under accelerate
(`accelerate launch --num_processes 2 --cpu --no_python sdpo curate score DATA --out X.parquet`),
process r takes the chunks k with k % N == r; the main process merges the shards in chunk order,
so the output does not depend on N. Finished pairs also go to the pair cache (`scoring/cache.py`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import polars as pl

from sdpo_kit.console import say
from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import folder_lock, sha256_file
from sdpo_kit.runs import SCORER_KEY
from sdpo_kit.scoring.cache import PairCache, cache_key, score_chunk
from sdpo_kit.scoring.frame import ScoreConfig, context_warning, provenance


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def input_fingerprint(files: list[Path]) -> str:
    """sha256 over every input file's name, size and bytes: a changed input never resumes an old run."""
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{f.stat().st_size}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _kept_rows(data: Path, start: int, chunk) -> list[int]:
    """1-based input rows of a chunk's pairs: its row range minus the data layer's rejects."""
    if data.is_dir():  # rows restart in every file: use the pair's position in the input instead
        return [start + i + 1 for i in range(chunk.pairs.height)]
    dropped = {r.row for r in chunk.rejects}
    return [r for r in range(start + 1, start + chunk.rows + 1) if r not in dropped][: chunk.pairs.height]


@dataclass
class ScoreFileConfig:
    """Score every pair with a reference model: log-probs, margins, token counts, truncation flags.

    The scorer's settings (max_length, truncation_mode, dtype, ...: `ScoreConfig`) come after these.
    """

    # The command batches more tokens per forward than the library default: faster on a CPU; batching moves
    # numbers by float noise only (frame.py TOKEN_BUDGET_DEFAULT), and token_budget is not in the provenance.
    cli_defaults: ClassVar[dict] = {"token_budget": 4096}

    data: str = field(metadata={"help": "Preference data: any file or folder `sdpo data inspect` reads.",
                                "positional": True})
    out: str = field(metadata={"help": "Scored parquet to write (rejects go beside it)."})
    model: str = field(default="default", metadata={"help": "Reference model: `default` or a local folder."})
    reference: str | None = field(default=None, metadata={"help": "Same as --model (reads better beside --policy)."})
    policy: str | None = field(default=None, metadata={
        "help": "Also score this model and add its implicit reward margin."})
    limit: int | None = field(default=None, metadata={"help": "Read only the first N input rows."})
    format: str | None = field(default=None, metadata={"help": "Force the input format (default: detected)."})
    shard_rows: int = field(default=512, metadata={"help": "Input rows per shard (the unit of resume)."})
    resume: bool = field(default=True, metadata={
        "help": "Keep finished shards of an interrupted run with the same input, --limit, --shard_rows, model "
                "and settings (else start afresh, saying why)."})
    cache: bool = field(default=True, metadata={"help": "Reuse pairs already scored with the same model and settings."})

    def __post_init__(self):
        if self.reference is not None and self.model not in ("default", self.reference):
            raise UsageError(f"--model {self.model!r} and --reference {self.reference!r} disagree; pass one of them")
        if self.shard_rows < 1 or (self.limit is not None and self.limit < 0):
            raise UsageError(f"--shard_rows {self.shard_rows} / --limit {self.limit}: need shard_rows >= 1 and "
                             "limit >= 0")

    @property
    def reference_model(self) -> str:
        """The reference model to load: --reference, else --model."""
        return self.reference or self.model



def score_file(cfg: ScoreFileConfig, config: ScoreConfig | None = None, *, progress: bool = True) -> Path:
    """Score every pair of `cfg.data` with `cfg.reference_model` (and `cfg.policy`) into `cfg.out`.

    Writes `out` (scored columns, provenance under the parquet metadata key `sdpo_kit.scorer`)
    and its rejects file (the data layer's rejects and `prompt_too_long`), returns `out`.
    `resume=False` discards finished shards of an earlier run; `cache=False` bypasses the cache.
    `config`: the scorer's settings (None: its defaults); `progress`: a pairs/s bar on stderr.
    """
    from accelerate import PartialState

    from sdpo_kit.data.containers import list_files

    config = config or ScoreConfig()
    data, out, state = Path(cfg.data), Path(cfg.out), PartialState()
    # Everything about the input and --out is checked before the model loads (seconds to minutes).
    inputs = list_files(data)
    check_out(data, inputs, out)
    run = {"input_sha256": input_fingerprint(inputs), "limit": cfg.limit, "shard_rows": cfg.shard_rows,
           "format": cfg.format, "columns": {}}  # "columns": part of the stamp since issue 11
    # One writer per --out (two would mix their shards); the main process holds the lock.
    with folder_lock(out, "sdpo curate score") if state.is_main_process else contextlib.nullcontext():
        return _score(cfg, config, data, out, run, state, progress)


def _score(cfg: ScoreFileConfig, config: ScoreConfig, data: Path, out: Path, run: dict, state, progress: bool) -> Path:
    """score_file's work under the --out lock: load, score the shards (resuming), merge."""
    from sdpo_kit.console import main_process
    from sdpo_kit.data import iter_pairs
    from sdpo_kit.models import cache_dir, load_model

    device = None if state.device.type == "cpu" else str(state.device)
    models = [load_model(cfg.reference_model, config.dtype, device)]
    if cfg.policy is not None:
        models.append(load_model(cfg.policy, config.dtype, device))
    tokenizer = models[0][1]
    warning = context_warning(models[0][0], config)
    if warning and state.is_main_process and main_process():
        say(warning)
    meta = provenance(*models[0], config)  # the reference's, at the top level (docs/ARCHITECTURE.md)
    if cfg.policy is not None:
        meta |= {"policy": provenance(*models[1], config), "beta": config.beta}
    key = cache_key(meta)
    parts = _prepare_parts(out, {"key": key, **run}, cfg.resume, state)
    store = PairCache(cache_dir() / "scores" / key if cfg.cache else None)
    read = {"format": cfg.format, "limit": cfg.limit}
    mine = lambda k: k % state.num_processes == state.process_index  # noqa: E731
    bar = _bar(data, read, cfg.shard_rows, mine, progress and state.is_main_process and main_process())
    start = 0
    for k, chunk in enumerate(iter_pairs(data, batch_rows=cfg.shard_rows, **read)):
        shard, rows = parts / f"shard_{k:06d}.parquet", _kept_rows(data, start, chunk)
        start += chunk.rows
        if not mine(k) or _shard_done(shard):
            bar and mine(k) and bar.update(chunk.pairs.height)
            continue
        scored, rejects = score_chunk(chunk.pairs, rows, [m for m, _ in models], tokenizer, config, store, bar,
                                       str(data))
        _write_shard(shard, scored, chunk.rejects + rejects)
    bar and bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        meta["input"] = {"path": str(data), "format": cfg.format, "limit": cfg.limit, "sha256": run["input_sha256"],
                         "shard_rows": cfg.shard_rows}
        _merge(parts, out, meta)
    state.wait_for_everyone()
    return out


def check_out(data: Path, inputs: list[Path], out: Path) -> None:
    """Refuse an --out that is a folder, or whose writing (the parquet, its rejects, its shard
    folder) would replace an input or land inside an input folder (read as input next time)."""
    from sdpo_kit.data import rejects_path
    from sdpo_kit.io import refuse_overwriting_input, same_or_inside

    if out.is_dir():
        raise UsageError(f"--out {out}", "is a folder; give the path of the .parquet file to write")
    for target in (out, rejects_path(out), parts_dir(out)):
        refuse_overwriting_input(inputs, target)
    if data.is_dir() and same_or_inside(out, data):
        raise UsageError(f"--out {out}", f"is inside the input folder {data}; it would be read as input next time")


# The stamp's keys in the user's words, for the "starting afresh" line.
STAMP_NAMES = {"input_sha256": "input content (sha256)", "limit": "--limit", "shard_rows": "--shard_rows",
               "format": "--format", "columns": "--*-col mapping", "key": "model or scoring settings"}


def _prepare_parts(out: Path, stamp: dict, resume: bool, state) -> Path:
    """The shard folder of `out`, emptied unless it holds a resumable run with the same stamp
    (model, settings, input content, --limit, --shard_rows, format); says on stderr why it starts afresh."""
    from sdpo_kit.stamps import restamp

    parts = parts_dir(out)
    if state.is_main_process:
        shards = len(list(parts.glob("shard_*.sha256")))  # finished ones
        why = restamp(parts, stamp, resume, "run.json", STAMP_NAMES)
        if why is not None and shards:
            say(f"resume: starting afresh, {shards} finished shard(s) in {parts} discarded: {why}")
        for bad, what in ([] if why is not None else _bad_shards(parts)):
            say(f"resume: {bad.name} is {what}; scoring it again")
            for f in (bad, bad.with_suffix(".rejects.jsonl"), bad.with_suffix(".sha256")):
                f.unlink(missing_ok=True)
    state.wait_for_everyone()
    return parts


def _shard_done(shard: Path) -> bool:
    """A shard is finished once its checksum file (written last) exists."""
    return shard.with_suffix(".sha256").exists()


def _bad_shards(parts: Path) -> list[tuple[Path, str]]:
    """Finished-looking shards whose parquet or rejects no longer match the checksums written with them."""
    from sdpo_kit.io import read_json

    bad = []
    for shard in sorted(parts.glob("shard_*.parquet")):
        sums = shard.with_suffix(".sha256")
        if not sums.exists():
            continue  # never finished: it is scored again anyway
        try:
            want = read_json(sums)
            ok = all(sha256_file(shard.with_suffix(x)) == want[x] for x in (".parquet", ".rejects.jsonl"))
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            bad.append((shard, "truncated or corrupt (checksum mismatch)"))
    return bad


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
    from sdpo_kit.io import write_json, write_parquet

    write_rejects(rejects, shard.with_suffix(".rejects.jsonl"))
    write_parquet(shard, scored)
    # Last: the checksums mark the shard done, and let a resume detect a shard damaged since.
    write_json(shard.with_suffix(".sha256"), {x: sha256_file(shard.with_suffix(x)) for x in (".parquet", ".rejects.jsonl")})


REJECTS_KEY = "sdpo_kit.rejects"  # parquet footer: {"file", "sha256", "rows"} of the rejects written with it


def _merge(parts: Path, out: Path, meta: dict) -> None:
    """Concatenate the shards in order into `out` (streamed, atomic) and their rejects beside it.

    The old `out` goes first and the new one comes last, its footer naming the rejects' sha256: a
    failed or killed re-score never leaves an old parquet beside new rejects (`check_rejects`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sdpo_kit.data import rejects_path
    from sdpo_kit.io import atomic_path

    shards = sorted(parts.glob("shard_*.parquet"))
    if not shards:
        raise InputError(f"{meta['input']['path']}: no rows to score")
    out.unlink(missing_ok=True)
    rejects = rejects_path(out)
    rows = _merge_rejects(shards, rejects)
    if sum(pq.read_metadata(f).num_rows for f in shards) == 0:  # every row rejected: say so, exit 1
        shutil.rmtree(parts)
        reasons = Counter(json.loads(x)["reason"] for x in rejects.read_text(encoding="utf-8").splitlines() if x)
        raise InputError(meta["input"]["path"], f"no valid pairs to score: all {sum(reasons.values())} rows rejected "
                         f"({', '.join(f'{k} {v}' for k, v in reasons.most_common())}); see {rejects}")
    schema = pa.unify_schemas([pq.read_schema(f) for f in shards], promote_options="permissive")
    record = {"file": rejects.name, "sha256": sha256_file(rejects), "rows": rows}
    schema = schema.with_metadata({SCORER_KEY: json.dumps(meta), REJECTS_KEY: json.dumps(record)})
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema, write_page_checksum=True) as writer:
        for f in shards:
            table = pq.read_table(f)
            for name in schema.names:
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
            writer.write_table(table.select(schema.names).cast(schema))
    shutil.rmtree(parts)


def check_rejects(out: str | Path) -> Path:
    """The rejects file of a scored parquet, checked to be the one written with it (its footer's
    sha256; files from before the footer key are trusted). InputError when they do not belong together."""
    from sdpo_kit.data import rejects_path
    from sdpo_kit.io import read_json_meta

    out = Path(out)
    rejects, record = rejects_path(out), read_json_meta(out, REJECTS_KEY)
    if record is not None and (not rejects.is_file() or sha256_file(rejects) != record.get("sha256")):
        raise InputError(rejects, f"is not the rejects file written with {out.name} (missing or sha256 differs): "
                         "they come from different runs; score again")
    return rejects


def _merge_rejects(shards: list[Path], path: Path) -> int:
    """The shards' rejects, in order, into `path`; returns how many lines."""
    from sdpo_kit.io import atomic_path

    lines = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as w:
        for f in shards:
            text = f.with_suffix(".rejects.jsonl").read_text(encoding="utf-8")
            lines += text.count("\n")
            w.write(text)
    return lines


def summary(out: Path) -> str:
    """What `sdpo curate score` prints: where the scores and the rejects went, with counts."""
    from collections import Counter

    import pyarrow.parquet as pq

    rejects = check_rejects(out)
    reasons = Counter(json.loads(line)["reason"] for line in rejects.read_text(encoding="utf-8").splitlines() if line)
    why = ", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "none"
    return (f"scored {pq.read_metadata(out).num_rows} pairs -> {out}\n"
            f"rejected {sum(reasons.values())} ({why}) -> {rejects}")
