"""Load preference data into canonical pairs; every input row ends as a pair or a reject.

    python -c "from sdpo_kit.data import load_pairs; r = load_pairs('data/dpo_en_demo.json'); print(r.format, r.rows, r.pairs.height, len(r.rejects))"

`iter_pairs` streams chunks (one `LoadResult` per `batch_rows` input rows, duplicates caught
across chunks); `load_pairs` gathers them into one DataFrame. Canonical schema and reject
reasons: docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import polars as pl

from sdpo_kit.data.containers import Chunk, RawError, iter_chunks, list_files, stem_of
from sdpo_kit.data.formats import CONSUMED, FORMATS, RowError, detect_format, normalise, pair_id
from sdpo_kit.errors import InputError, UsageError

MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))
SCHEMA = {"pair_id": pl.String, "prompt": MESSAGES, "chosen": MESSAGES, "rejected": MESSAGES, "source": pl.String}
CANONICAL_NAMES = ("prompt", "chosen", "rejected", "source", "conversations")


class DataError(InputError):
    """Raised in strict mode at the first bad row; the message reads `file:row: problem`."""


@dataclass
class Reject:
    file: str
    row: int
    reason: str
    detail: str
    raw: Any

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadResult:
    pairs: pl.DataFrame
    rejects: list[Reject] = field(default_factory=list)
    rows: int = 0
    format: str = ""

    @property
    def reasons(self) -> dict[str, int]:
        """Reject counts per reason, most frequent first."""
        return dict(Counter(r.reason for r in self.rejects).most_common())

    def summary(self) -> str:
        """One line for logs: `300 rows (sharegpt): 295 valid, 5 rejected (duplicate 5)`."""
        why = ", ".join(f"{k} {v:,}" for k, v in self.reasons.items())
        return (f"{self.rows:,} rows ({self.format or 'format unknown'}): {self.pairs.height:,} valid, "
                f"{len(self.rejects):,} rejected" + (f" ({why})" if why else ""))


def prompt_text() -> pl.Expr:
    """The prompt's last turn (the message being answered) on canonical pairs: the key that a
    by-prompt train / held-out split groups on, so no prompt lands on both sides."""
    return pl.col("prompt").list.last().struct.field("content")


def rejects_path(out: str | Path) -> Path:
    """`X.parquet` -> `X.rejects.jsonl`, beside the output."""
    out = Path(out)
    return out.with_name(f"{out.name[: -len(out.suffix)] if out.suffix else out.name}.rejects.jsonl")


def write_rejects(rejects: Iterable[Reject], path: str | Path) -> Path:
    """One JSON object per reject, written atomically (an empty file when there are none)."""
    from sdpo_kit.io import write_jsonl

    return write_jsonl(path, [r.to_dict() for r in rejects])


def load_pairs(path, *, format: str | None = None, columns: dict[str, str] | None = None,
               keep_duplicates: bool = False, strict: bool = False, limit: int | None = None) -> LoadResult:
    """All pairs behind `path` as one canonical DataFrame (input order) plus the rejects."""
    parts = list(iter_pairs(path, format=format, columns=columns, keep_duplicates=keep_duplicates,
                            strict=strict, limit=limit, batch_rows=65536))
    frames = [p.pairs for p in parts if p.pairs.height] or [pl.DataFrame(schema=SCHEMA)]
    pairs = pl.concat(frames, how="diagonal_relaxed")
    rejects = [r for p in parts for r in p.rejects]
    fmt = ", ".join(dict.fromkeys(p.format for p in parts if p.format)) or format or ""  # a folder may mix formats
    return LoadResult(pairs, rejects, sum(p.rows for p in parts), fmt)


def iter_pairs(path, *, format: str | None = None, columns: dict[str, str] | None = None,
               keep_duplicates: bool = False, strict: bool = False, limit: int | None = None,
               batch_rows: int = 1024) -> Iterator[LoadResult]:
    """Stream `path` as LoadResults of at most `batch_rows` input rows each."""
    if format is not None and format not in FORMATS:
        raise UsageError(f"--format: unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    columns = dict(columns or {})
    bad = sorted(set(columns) - set(CANONICAL_NAMES))
    if bad:
        raise UsageError(f"columns: unknown canonical names {bad}; use {', '.join(CANONICAL_NAMES)}")
    path = Path(path)
    # A directory's pairs share one default source: its name (shard names are not sources).
    default_source = path.name if path.is_dir() else stem_of(path)
    state = {"format": format, "seen": {}, "rows": 0}  # seen: pair_id -> "file:row" of its first row
    files = {f.name: f for f in list_files(path)}  # fails early on a missing path or unsupported file
    current = None  # the file whose format `state["format"]` is
    for chunk in iter_chunks(path, batch_rows):
        if limit is not None and state["rows"] + len(chunk.rows) > limit:
            chunk.rows = chunk.rows[: max(limit - state["rows"], 0)]
        if not chunk.rows:
            return
        if format is None and (chunk.file != current or state["format"] is None):
            # Each file of a folder may have its own layout; one odd row never decides it.
            state["format"], current = file_format(files.get(chunk.file), chunk, columns), chunk.file
        state["rows"] += len(chunk.rows)
        yield _load_chunk(chunk, state, columns, default_source, keep_duplicates, strict)
        if limit is not None and state["rows"] >= limit:
            return


DETECT_ROWS = 256  # rows of a file that vote on its format


def file_format(file: Path | None, chunk: Chunk, columns: dict) -> str | None:
    """The layout most of a file's first DETECT_ROWS rows show (None while no row parsed).

    A file none of whose rows has the columns of any layout is not preference data: that is a
    file-level InputError, not one reject per row."""
    rows = [v for _, v in chunk.rows[:DETECT_ROWS]]
    if len(chunk.rows) < DETECT_ROWS and file is not None:  # a small chunk: look further into the file
        rows = [v for _, v in next(iter_chunks(file, DETECT_ROWS), Chunk("", [])).rows] or rows
    votes: Counter = Counter()
    for value in rows:
        if isinstance(value, dict):
            try:
                votes[detect_format(value, columns)] += 1
            except RowError:
                pass
    if votes:
        return votes.most_common(1)[0][0]
    seen = sorted({str(k) for v in rows if isinstance(v, dict) for k in v})
    if not rows:
        return None
    if not any(isinstance(v, dict) for v in rows):  # e.g. a JSON array of numbers, a binary file named .jsonl
        first = rows[0]
        raise InputError(file or chunk.file, f"not preference data: none of the first {len(rows)} row(s) is a "
                         f"record ({first.reason}: {first.detail[:100]})")
    names = ", ".join(f"--{n}_col" for n in ("prompt", "chosen", "rejected", "conversations"))
    raise InputError(file or chunk.file, f"not preference data: no prompt/chosen/rejected or conversations columns "
                     f"found (columns: {', '.join(seen[:12])}{', ...' if len(seen) > 12 else ''}); use {names} to map yours")


def _load_chunk(chunk: Chunk, state: dict, columns: dict, default_source: str,
                keep_duplicates: bool, strict: bool) -> LoadResult:
    records, kept, rejects = [], [], []
    for i, (row, value) in enumerate(chunk.rows):
        try:
            record = _normalise_row(value, state, columns, default_source)
            first = state["seen"].get(record["pair_id"])
            if first and not keep_duplicates:
                raise RowError("duplicate", f"same pair_id {record['pair_id']} as {first}")
        except RowError as e:
            raw = value.raw if isinstance(value, RawError) else value
            reject = Reject(chunk.file, row, e.reason, e.detail, _jsonable(raw))
            if strict:
                raise DataError(f"{chunk.file}:{row}: {e.reason}: {e.detail}") from None
            rejects.append(reject)
            continue
        state["seen"].setdefault(record["pair_id"], f"{chunk.file}:{row}")
        records.append(record)
        kept.append(i)
    pairs = pl.DataFrame(records, schema=SCHEMA) if records else pl.DataFrame(schema=SCHEMA)
    extras = _extras(chunk, kept, columns, state["format"]) if kept and state["format"] else None
    if extras is not None and extras.width:
        pairs = pl.concat([pairs, extras], how="horizontal")
    return LoadResult(pairs, rejects, len(chunk.rows), state["format"] or "")


def _normalise_row(value: dict | RawError, state: dict, columns: dict, default_source: str) -> dict:
    if isinstance(value, RawError):
        raise RowError(value.reason, value.detail)
    prompt, chosen, rejected = normalise(value, state["format"], columns)
    source = value.get(columns.get("source", "source"))
    return {"pair_id": pair_id(prompt, chosen, rejected), "prompt": prompt, "chosen": chosen,
            "rejected": rejected, "source": default_source if source is None else str(source)}


def _extras(chunk: Chunk, kept: list[int], columns: dict, fmt: str) -> pl.DataFrame:
    """The kept rows' other columns, untouched (arrow-backed inputs keep their dtypes)."""
    # An input `pair_id` (e.g. canonical pairs loaded again) is replaced by the recomputed one.
    consumed = {columns.get(n, n) for n in CONSUMED[fmt]} | {"pair_id"}
    # An extra column that is named like a canonical one (e.g. a forced format ignores it) is renamed.
    rename = lambda c: f"{c}_input" if c in SCHEMA else c  # noqa: E731
    if chunk.table is not None:
        names = [c for c in chunk.table.column_names if c not in consumed]
        table = chunk.table.select(names).take(kept)
        return pl.from_arrow(table.rename_columns([rename(c) for c in names]))  # type: ignore[return-value]
    rows = [{rename(k): v for k, v in chunk.rows[i][1].items() if k not in consumed} for i in kept]
    names = list(dict.fromkeys(k for r in rows for k in r))
    if not names:
        return pl.DataFrame()
    return pl.from_dicts(rows, schema=names, infer_schema_length=None, strict=False)


def _jsonable(raw: Any) -> Any:
    """Raw rows go into JSONL; values JSON cannot hold (bytes, dates) become strings."""
    return json.loads(json.dumps(raw, ensure_ascii=False, default=str))
