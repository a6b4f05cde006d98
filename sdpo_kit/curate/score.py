"""Reference log-probs for preference pairs: TRL-exact numbers, computed fast.

    sdpo curate score data/dpo_en_demo.json --model default --limit 32 --out /tmp/scored.parquet

    from sdpo_kit.curate.score import ScoreConfig, score_frame
    scored, rejects = score_frame(pairs, model, tokenizer, ScoreConfig(max_length=1024))

Per pair we reproduce TRL 1.16's `DPOTrainer` reference pass (tokenisation, truncation, the sum
of completion-token log-probs: `sdpo_kit.curate.tokens`) but run it differently (`sdpo_kit.curate.logps`):
length-sorted batches padded on the right without a mask, a long prefix shared by chosen and rejected
computed once, and the LM head only where a completion token is scored.

The file layer (second half of this module, `score_file`; under accelerate:
`accelerate launch --num_processes 2 --cpu --no_python sdpo curate score DATA --out X.parquet`).
The input is read in chunks of `shard_rows` rows (`sdpo_kit.curate.data.iter_pairs`); chunk k becomes
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import polars as pl

from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.curate.tokens import Sequence, prompt_too_long, tokenize_pair, truncate

SCORED_COLUMNS = {
    "ref_chosen_logps": pl.Float64, "ref_rejected_logps": pl.Float64, "margin": pl.Float64,
    "ref_chosen_logps_mean": pl.Float64, "ref_rejected_logps_mean": pl.Float64, "margin_per_token": pl.Float64,
    "prompt_tokens": pl.Int64, "chosen_tokens": pl.Int64, "rejected_tokens": pl.Int64,
    "chosen_truncated": pl.Boolean, "rejected_truncated": pl.Boolean,
    "margin_shared": pl.Float64, "chosen_chars": pl.Int64, "rejected_chars": pl.Int64,
}
# Part of the provenance, hence of the pair cache key and the resume stamp: bump it whenever the
# scored columns change, so pairs cached before a column existed are never served as complete.
SCORED_LAYOUT = 2
POLICY_COLUMNS = {"policy_chosen_logps": pl.Float64, "policy_rejected_logps": pl.Float64,
                  "reward_margin": pl.Float64, "reward_correct": pl.Boolean}
DTYPES = ("float32", "bfloat16")


@dataclass
class ScoreConfig:
    """How pairs are tokenised and scored; the fields that change the numbers go into provenance."""

    max_length: int | None = field(default=1024, metadata={
        "help": "Max tokens of prompt+completion per sequence (TRL's `max_length`); none (or 0) = no truncation."})
    truncation_mode: str = field(default="keep_start", metadata={
        "help": "TRL's `truncation_mode`: 'keep_start' cuts the end (pairs whose prompt alone fills max_length "
                "become `prompt_too_long` rejects), 'keep_end' cuts the beginning."})
    dtype: str = field(default="float32", metadata={
        "help": "Model dtype: 'float32' (TRL-exact) or 'bfloat16' (faster, moves sums by up to ~1.5 nats: "
                "for ordering only). The model passed in must already have this dtype."})
    token_budget: int = field(default=512, metadata={
        "help": "Sequences of similar length (within 1/32) are batched, right-padded, up to this many tokens "
                "per forward counting padding; a longer sequence runs alone."})
    beta: float = field(default=0.1, metadata={
        "help": "DPO beta scaling the implicit reward margin when a policy model is scored too."})
    share_prefix: int = field(default=256, metadata={
        "help": "When chosen and rejected share at least this many leading tokens (long dialogue prompts), "
                "compute them once and run each completion on the prefix's KV cache; 0 = never."})
    head_chunk: int = field(default=512, metadata={
        "help": "Positions projected through the LM head at once (bounds the chunk x vocab logits memory)."})

    def __post_init__(self):
        if self.max_length == 0:  # `--max_length 0`: the command line's "no truncation"
            self.max_length = None
        if self.max_length is not None and self.max_length < 2:
            raise UsageError(f"max_length must be >= 2 or None, got {self.max_length}")
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise UsageError(f"truncation_mode must be 'keep_start' or 'keep_end', got {self.truncation_mode!r}")
        if self.dtype not in DTYPES:
            raise UsageError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.share_prefix < 0:
            raise UsageError(f"share_prefix must be >= 0 (0 = never share), got {self.share_prefix}")
        if self.token_budget < 1 or self.head_chunk < 1:
            raise UsageError(f"token_budget and head_chunk must be >= 1, got {self.token_budget}, {self.head_chunk}")
        if self.beta <= 0:
            raise UsageError(f"beta must be > 0, got {self.beta}")

    def settings(self) -> dict:
        """The fields that change the numbers (the cache key and the provenance)."""
        return {"max_length": self.max_length, "truncation_mode": self.truncation_mode, "dtype": self.dtype}


@dataclass
class ScoreFileConfig:
    """Score every pair with a reference model: log-probs, margins, token counts, truncation flags.

    The scorer's settings (max_length, truncation_mode, dtype, ...: `ScoreConfig`) come after these.
    """

    # The command batches more tokens per forward than the library default: faster on a CPU, and the
    # batching changes no number beyond float noise (token_budget is not in the provenance).
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


def run(cfg: ScoreFileConfig, scorer: ScoreConfig) -> Path:
    """`sdpo curate score`: score the file, print where it went and how much of the margin is length."""
    from sdpo_kit.console import main_process

    path = score_file(cfg.data, cfg.out, model=cfg.reference or cfg.model, config=scorer, policy=cfg.policy,
                      resume=cfg.resume, limit=cfg.limit, format=cfg.format, shard_rows=cfg.shard_rows,
                      cache=cfg.cache)  # errors (bad input, an --out over the input) are answered by the CLI
    if main_process():  # by RANK: under a launcher every process returns here, one prints
        print(summary(path))
        from sdpo_kit.curate.length import judge_columns, score_diagnosis

        names = pl.read_parquet_schema(path)
        cols = [c for c in ("margin", "margin_per_token", "margin_shared", "chosen_tokens", "rejected_tokens")
                if c in names]
        frame = pl.read_parquet(path, columns=cols + judge_columns(pl.DataFrame(schema=names)))
        for line in score_diagnosis(frame):  # how much of the margin is answer length (issue 12)
            print(line)
    return path


def _pair_rows(pairs: pl.DataFrame, tokenizer, config: ScoreConfig, file: str, row_offset: int):
    """Per input row: the truncated (chosen, rejected) sequences plus token counts, or a `Reject`."""
    from sdpo_kit.curate.data import Reject

    extra = [c for c in ("tools", "chat_template_kwargs") if c in pairs.columns]
    out = []
    for i, row in enumerate(pairs.select(["prompt", "chosen", "rejected", *extra]).iter_rows(named=True)):
        p, c, r = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"],
                                tools=row.get("tools"), chat_template_kwargs=row.get("chat_template_kwargs"))
        if prompt_too_long(p, config.max_length, config.truncation_mode):
            raw = {k: row[k] for k in ("prompt", "chosen", "rejected")}
            detail = (f"prompt has {len(p)} tokens >= max_length={config.max_length}: with keep_start no completion "
                      "token would remain (TRL drops such pairs silently)")
            out.append(Reject(file, row_offset + i + 1, "prompt_too_long", detail, raw))
            continue
        seqs = (truncate(p, c, config.max_length, config.truncation_mode),
                truncate(p, r, config.max_length, config.truncation_mode))
        out.append((seqs, (len(p), len(c), len(r))))
    return out


def _check_dtype(model, config: ScoreConfig, role: str) -> None:
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if dtype != config.dtype:
        raise ValueError(f"the {role} model is {dtype} but ScoreConfig.dtype={config.dtype!r}: load it with "
                         f"sdpo_kit.models.load_model(path, dtype={config.dtype!r})")


def _score_pairs(models: list, pairs: list[tuple[Sequence, Sequence]], config: ScoreConfig, progress):
    """(sums, counts) per model, each (2N,) with [chosen_0, rejected_0, chosen_1, ...], via `logps.plan`."""
    import torch
    from tqdm.auto import tqdm

    from sdpo_kit.curate.logps import Scorer, plan

    items = plan(pairs, config.token_budget, config.share_prefix or None)
    # `progress` may be a caller's bar (the file scorer's, over all shards): update it, never close it.
    own = not hasattr(progress, "update")
    bar = tqdm(total=len(pairs), unit="pair", desc="scoring", disable=not progress, dynamic_ncols=True) if own else progress
    scorers = [Scorer(m, 2 * len(pairs), config.head_chunk) for m in models]
    halves = [0] * len(pairs)  # segments done per pair: the bar counts whole pairs
    with torch.inference_mode():
        for item in items:
            for scorer in scorers:
                scorer.run(item, pairs)
            for i in ([item[1]] * 2 if item[0] == "prefix" else [seg // 2 for seg, _ in item[1]]):
                halves[i] += 1
                bar.update(halves[i] == 2)
    if own:
        bar.close()
    return [s.sums for s in scorers], scorers[0].counts, shared_margins(scorers[0], len(pairs))


def shared_margins(scorer, n_pairs: int) -> list[float | None]:
    """Per pair: chosen minus rejected log-prob over the first min(n_w, n_l) scored tokens of each."""
    out = []
    for i in range(n_pairs):
        k = int(min(scorer.counts[2 * i], scorer.counts[2 * i + 1]))
        c, r = scorer.shared_sum(2 * i, k), scorer.shared_sum(2 * i + 1, k)
        out.append(None if c is None or r is None else c - r)
    return out


def completion_chars(frame: pl.DataFrame, col: str) -> pl.Series:
    """Characters of a completion column: a string, or the contents of a list of messages."""
    if frame.schema[col] == pl.String:
        expr = pl.col(col).str.len_chars()
    else:
        expr = pl.col(col).list.eval(pl.element().struct.field("content").str.len_chars()).list.sum()
    return frame.select(expr.cast(pl.Int64))[col]


def score_frame(pairs: pl.DataFrame, model, tokenizer, config: ScoreConfig, *, policy=None, progress=True,
                file: str = "", row_offset: int = 0, accelerator=None):
    """Score canonical pairs with `model` (the reference) and optionally `policy`.

    Returns `(scored, rejects)`: the kept input rows, in input order, with the columns of
    `SCORED_COLUMNS` (+ `POLICY_COLUMNS`), and a `Reject(reason="prompt_too_long")` for each pair
    TRL would drop; `file`/`row_offset` locate those rejects (row = row_offset + 1-based index).
    With an `accelerate.Accelerator` of several processes, each scores a contiguous share of the
    rows and every process returns the whole, gathered result.
    """
    if accelerator is not None and accelerator.num_processes > 1:
        return _score_distributed(pairs, model, tokenizer, config, policy, progress, file, row_offset, accelerator)
    from sdpo_kit.curate.data import Reject

    _check_dtype(model, config, "reference")
    if policy is not None:
        _check_dtype(policy, config, "policy")
    items = _pair_rows(pairs, tokenizer, config, file, row_offset)
    rejects = [it for it in items if isinstance(it, Reject)]
    keep = [i for i, it in enumerate(items) if not isinstance(it, Reject)]
    seqs = [items[i][0] for i in keep]
    models = [model] + ([policy] if policy is not None else [])
    sums, counts, shared = _score_pairs(models, seqs, config, progress)
    lengths = [items[i][1] for i in keep]
    return _assemble(pairs[keep], seqs, lengths, sums, counts, config.beta, shared), rejects


def _assemble(kept: pl.DataFrame, seqs, lengths, sums, counts, beta: float, shared) -> pl.DataFrame:
    chosen, rejected = sums[0][0::2].tolist(), sums[0][1::2].tolist()
    n_c, n_r = counts[0::2].tolist(), counts[1::2].tolist()
    mean_c = [s / n if n else None for s, n in zip(chosen, n_c)]
    mean_r = [s / n if n else None for s, n in zip(rejected, n_r)]
    cols = {
        "ref_chosen_logps": chosen, "ref_rejected_logps": rejected,
        "margin": [c - r for c, r in zip(chosen, rejected)],
        "ref_chosen_logps_mean": mean_c, "ref_rejected_logps_mean": mean_r,
        "margin_per_token": [None if c is None or r is None else c - r for c, r in zip(mean_c, mean_r)],
        "prompt_tokens": [p for p, _, _ in lengths], "chosen_tokens": [c for _, c, _ in lengths],
        "rejected_tokens": [r for _, _, r in lengths],
        "chosen_truncated": [c.truncated for c, _ in seqs],
        "rejected_truncated": [r.truncated for _, r in seqs],
        "margin_shared": shared,
        "chosen_chars": completion_chars(kept, "chosen").to_list(),
        "rejected_chars": completion_chars(kept, "rejected").to_list(),
    }
    if len(sums) > 1:
        pc, pr = sums[1][0::2].tolist(), sums[1][1::2].tolist()
        reward = [beta * ((a - b) - (c - d)) for a, b, c, d in zip(pc, chosen, pr, rejected)]
        cols |= {"policy_chosen_logps": pc, "policy_rejected_logps": pr, "reward_margin": reward,
                 "reward_correct": [r > 0 for r in reward]}
    schema = SCORED_COLUMNS | POLICY_COLUMNS
    new = pl.DataFrame({k: pl.Series(k, v, dtype=schema[k]) for k, v in cols.items()})
    return kept.drop([c for c in new.columns if c in kept.columns]).hstack(new)


def shard_bounds(n: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous rows [start, stop) of process `index` among `count` (sizes differ by at most one)."""
    base, extra = divmod(n, count)
    start = index * base + min(index, extra)
    return start, start + base + (index < extra)


def _score_distributed(pairs, model, tokenizer, config, policy, progress, file, row_offset, accelerator):
    from accelerate.utils import gather_object

    start, stop = shard_bounds(pairs.height, accelerator.process_index, accelerator.num_processes)
    scored, rejects = score_frame(pairs[start:stop], model, tokenizer, config, policy=policy,
                                  progress=progress if accelerator.is_main_process else False, file=file,
                                  row_offset=row_offset + start)
    parts = gather_object([(scored, rejects)])  # in process order = row order
    return pl.concat([p[0] for p in parts], how="vertical_relaxed"), [r for p in parts for r in p[1]]


def provenance(model, tokenizer, config: ScoreConfig) -> dict[str, Any]:
    """What produced a scored file: weights fingerprint, chat template hash, settings, versions."""
    import torch
    import transformers
    import trl

    from sdpo_kit import __version__
    from sdpo_kit.models import model_fingerprint

    template = getattr(tokenizer, "chat_template", None) or ""
    template = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return {
        "model": str(getattr(model, "name_or_path", "") or model.config._name_or_path),
        "fingerprint": model_fingerprint(model),
        "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        **config.settings(),
        "scored_layout": SCORED_LAYOUT,
        "versions": {"sdpo_kit": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "trl": trl.__version__},
    }


# --- the file layer: `sdpo curate score` (shards, pair cache, resume, accelerate) ---

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


def say(message: str) -> None:
    """A line on stderr (stdout stays the command's result)."""
    import sys

    print(message, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def _score_chunk(pairs: pl.DataFrame, rows: list[int], models, tokenizer, config, cache: PairCache, bar, file: str,
                 accelerator=None):
    """Scored frame and rejects of one chunk; pairs found in the cache skip the forward pass."""
    from sdpo_kit.curate.data import Reject

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
    from sdpo_kit.curate.data import iter_pairs
    from sdpo_kit.curate.data.containers import list_files
    from sdpo_kit.models import cache_dir, load_model

    config = config or ScoreConfig()
    data, out, state = Path(data), Path(out), PartialState()
    # Everything about the input and --out is checked before the model loads (seconds to minutes).
    inputs = list_files(data)
    check_out(data, inputs, out)
    if shard_rows < 1 or (limit is not None and limit < 0):
        raise UsageError(f"--shard_rows {shard_rows} / --limit {limit}: need shard_rows >= 1 and limit >= 0")
    run = {"input_sha256": input_fingerprint(inputs), "limit": limit, "shard_rows": shard_rows, "format": format,
           "columns": columns or {}}
    if state.is_main_process:
        _lock(out)
    device = None if state.device.type == "cpu" else str(state.device)
    models = [load_model(model, config.dtype, device)]
    if policy is not None:
        models.append(load_model(policy, config.dtype, device))
    tokenizer = models[0][1]
    meta = provenance(*models[0], config)  # the reference's, at the top level (docs/ARCHITECTURE.md)
    if policy is not None:
        meta |= {"policy": provenance(*models[1], config), "beta": config.beta}
    key = cache_key(meta)
    parts = _prepare_parts(out, {"key": key, **run}, resume, state)
    store = PairCache(cache_dir() / "scores" / key if cache else None)
    read = {"format": format, "columns": columns, "limit": limit}
    mine = lambda k: k % state.num_processes == state.process_index  # noqa: E731
    bar = _bar(data, read, shard_rows, mine, progress and state.is_main_process and main_process())
    start = 0
    for k, chunk in enumerate(iter_pairs(data, batch_rows=shard_rows, **read)):
        shard, rows = parts / f"shard_{k:06d}.parquet", _kept_rows(data, start, chunk)
        start += chunk.rows
        if not mine(k) or _shard_done(shard):
            bar and mine(k) and bar.update(chunk.pairs.height)
            continue
        scored, rejects = _score_chunk(chunk.pairs, rows, [m for m, _ in models], tokenizer, config, store, bar,
                                       str(data))
        _write_shard(shard, scored, chunk.rejects + rejects)
    bar and bar.close()
    state.wait_for_everyone()
    if state.is_main_process:
        meta["input"] = {"path": str(data), "format": format, "limit": limit, "sha256": run["input_sha256"],
                         "shard_rows": shard_rows}
        _merge(parts, out, meta)
        _lock_path(out).unlink(missing_ok=True)
    state.wait_for_everyone()
    return out


def _lock_path(out: Path) -> Path:
    return out.with_name(out.name + ".lock")


def _lock(out: Path) -> None:
    """Refuse a second live `curate score` on the same --out: two writers would mix their shards.
    A lock left by a killed run (its pid no longer runs) is taken over."""
    import os

    from sdpo_kit.io import pid_alive

    lock = _lock_path(out)
    try:
        held = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        held = 0
    if held and held != os.getpid() and pid_alive(held):
        raise InputError(f"--out {out}", f"another `sdpo curate score` (pid {held}) is writing it; wait for it or stop it")
    out.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(f"{os.getpid()}\n")


def check_out(data: Path, inputs: list[Path], out: Path) -> None:
    """Refuse an --out that is a folder, or whose writing (the parquet, its rejects, its shard
    folder) would replace an input or land inside an input folder (read as input next time)."""
    from sdpo_kit.curate.data import rejects_path
    from sdpo_kit.io import refuse_overwriting_input, same_or_inside

    if out.is_dir():
        raise UsageError(f"--out {out}", "is a folder; give the path of the .parquet file to write")
    for target in (out, rejects_path(out), parts_dir(out)):
        refuse_overwriting_input(inputs, target)
    if data.is_dir() and same_or_inside(out, data):
        raise UsageError(f"--out {out}", f"is inside the input folder {data}; it would be read as input next time")


def _describe_change(old: dict, new: dict) -> str:
    """What differs between a finished-shards stamp and this run, in the user's words."""
    names = {"input_sha256": "input content (sha256)", "limit": "--limit", "shard_rows": "--shard_rows",
             "format": "--format", "columns": "--*-col mapping", "key": "model or scoring settings"}
    short = lambda v: f"{v[:12]}..." if isinstance(v, str) and len(v) > 16 else v  # noqa: E731
    diffs = [f"{name} {short(old.get(k, 'unknown'))} -> {short(new.get(k))}"
             for k, name in names.items() if old.get(k) != new.get(k)]
    return "; ".join(diffs) or "stamp differs"


def _prepare_parts(out: Path, stamp: dict, resume: bool, state) -> Path:
    """The shard folder of `out`, emptied unless it holds a resumable run with the same stamp
    (model, settings, input content, --limit, --shard_rows, format); says on stderr why it starts afresh."""
    from sdpo_kit.io import read_json, write_json

    parts = parts_dir(out)
    if state.is_main_process:
        path = parts / "run.json"
        if parts.exists():
            try:
                old = read_json(path)
            except (OSError, ValueError):
                old = None
            shards = len(list(parts.glob("shard_*.sha256")))  # finished ones
            why = ("--no_resume" if not resume else f"no readable {path.name}" if not isinstance(old, dict)
                   else None if old == stamp else _describe_change(old, stamp))
            if why is not None:
                if shards:
                    say(f"resume: starting afresh, {shards} finished shard(s) in {parts} discarded: {why}")
                shutil.rmtree(parts)
            else:
                for bad, what in _bad_shards(parts):
                    say(f"resume: {bad.name} is {what}; scoring it again")
                    for f in (bad, bad.with_suffix(".rejects.jsonl"), bad.with_suffix(".sha256")):
                        f.unlink(missing_ok=True)
        parts.mkdir(parents=True, exist_ok=True)
        write_json(path, stamp)
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

    from sdpo_kit.curate.data import iter_pairs

    total = sum(c.pairs.height for k, c in enumerate(iter_pairs(data, batch_rows=shard_rows, **read)) if mine(k))
    return tqdm(total=total, unit="pair", desc="scoring", dynamic_ncols=True, smoothing=0.1)


def _write_shard(shard: Path, scored: pl.DataFrame, rejects: list) -> None:
    from sdpo_kit.curate.data import write_rejects
    from sdpo_kit.io import write_json, write_parquet

    write_rejects(rejects, shard.with_suffix(".rejects.jsonl"))
    write_parquet(shard, scored)
    # Last: the checksums mark the shard done, and let a resume detect a shard damaged since.
    write_json(shard.with_suffix(".sha256"), {x: sha256_file(shard.with_suffix(x)) for x in (".parquet", ".rejects.jsonl")})


def _merge(parts: Path, out: Path, meta: dict) -> None:
    """Concatenate the shards in order into `out` (streamed, atomic) and their rejects beside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sdpo_kit.curate.data import rejects_path
    from sdpo_kit.io import atomic_path

    shards = sorted(parts.glob("shard_*.parquet"))
    if not shards:
        raise InputError(f"{meta['input']['path']}: no rows to score")
    if sum(pq.read_metadata(f).num_rows for f in shards) == 0:  # every row rejected: say so, exit 1
        _merge_rejects(shards, rejects_path(out))
        shutil.rmtree(parts)
        reasons = Counter(json.loads(x)["reason"] for x in rejects_path(out).read_text(encoding="utf-8").splitlines() if x)
        raise InputError(meta["input"]["path"], f"no valid pairs to score: all {sum(reasons.values())} rows rejected "
                         f"({', '.join(f'{k} {v}' for k, v in reasons.most_common())}); see {rejects_path(out)}")
    schema = pa.unify_schemas([pq.read_schema(f) for f in shards], promote_options="permissive")
    schema = schema.with_metadata({META_KEY: json.dumps(meta)})
    with atomic_path(out) as tmp, pq.ParquetWriter(tmp, schema, write_page_checksum=True) as writer:
        for f in shards:
            table = pq.read_table(f)
            for name in schema.names:
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
            writer.write_table(table.select(schema.names).cast(schema))
    _merge_rejects(shards, rejects_path(out))
    shutil.rmtree(parts)


def _merge_rejects(shards: list[Path], path: Path) -> None:
    from sdpo_kit.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as w:
        for f in shards:
            w.write(f.with_suffix(".rejects.jsonl").read_text(encoding="utf-8"))


def summary(out: Path) -> str:
    """What `sdpo curate score` prints: where the scores and the rejects went, with counts."""
    from collections import Counter

    import pyarrow.parquet as pq

    from sdpo_kit.curate.data import rejects_path

    rejects = rejects_path(out)
    reasons = Counter(json.loads(line)["reason"] for line in rejects.read_text(encoding="utf-8").splitlines() if line)
    why = ", ".join(f"{k} {v}" for k, v in reasons.most_common()) or "none"
    return (f"scored {pq.read_metadata(out).num_rows} pairs -> {out}\n"
            f"rejected {sum(reasons.values())} ({why}) -> {rejects}")


def score_sample(pairs: pl.DataFrame, model: str, sample: int | None = None, max_length: int | None = None,
                 seed: int = 0) -> tuple[pl.DataFrame, list, dict]:
    """`sdpo data card --scored`: (scored frame, rejects, provenance) of the pairs under `model`.

    With `sample` < pairs, a seeded random subset kept in input order, so the card is reproducible;
    the provenance records the model argument and how many of how many pairs were scored."""
    from sdpo_kit.models import load_model

    total = pairs.height
    if sample is not None and sample < total:
        pairs = pairs.with_row_index("__i").sample(sample, seed=seed).sort("__i").drop("__i")
    cfg = ScoreConfig(**({"max_length": max_length} if max_length else {}))
    m, tok = load_model(model)
    scored, rejects = score_frame(pairs, m, tok, cfg)
    scorer = {**provenance(m, tok, cfg), "model_arg": str(model), "scored_pairs": pairs.height, "of_pairs": total,
              "sample_seed": seed if pairs.height < total else None}
    return scored, list(rejects), scorer
