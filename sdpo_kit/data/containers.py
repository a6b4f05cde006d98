"""Containers: stream raw rows out of files, whatever their shape on disk.

    python -c "from sdpo_kit.data.containers import iter_chunks; print(next(iter_chunks('data/dpo_en_demo.json')).rows[0])"

A path is a `.jsonl`, `.json` (array, or JSON Lines under a .json name), `.parquet` or `.csv`
file, each optionally `.gz`; a `datasets.save_to_disk` directory (arrow files + state.json);
or a directory of such shards (read in sorted file-name order). Every container yields
`Chunk`s of at most `batch_rows` rows; a row is either a dict or a `RawError` (a line that
did not parse, non-UTF-8 bytes). Row numbers are 1-based within their own file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sdpo_kit.errors import InputError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")
# Lone surrogates are what `errors="surrogateescape"` makes of bytes that are not UTF-8, or what a
# JSON escape such as "\ud800" without its partner decodes to: neither is text (UTF-8 cannot hold it).
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # only such an escape can put one into a JSON line


@dataclass
class RawError:
    """A row that never became a dict: `reason` is `unparsable` or `non_utf8`."""

    reason: str
    detail: str
    raw: Any


@dataclass
class Chunk:
    """Consecutive rows of one file. `table` (arrow-backed files only) holds the same rows
    with their original dtypes, so pass-through columns keep them."""

    file: str
    rows: list[tuple[int, dict | RawError]]
    table: Any = None  # pyarrow.Table | None


def kind_of(path: Path) -> str:
    """The container kind of a file name: 'jsonl', 'json', 'parquet', 'csv' or 'arrow' ('' if none)."""
    name = path.name.lower()
    name = name[:-3] if name.endswith(".gz") else name
    return next((s[1:] for s in SUFFIXES if name.endswith(s)), "")


def stem_of(path: Path) -> str:
    """`data/hh.jsonl.gz` -> `hh`: the default `source` of a file's pairs."""
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    return name[: -len(Path(name).suffix)] if kind_of(path) else name


def list_files(path: str | Path) -> list[Path]:
    """The data files behind `path`, in reading order."""
    from sdpo_kit.io import special_file

    path = Path(path)
    if special_file(path):
        raise InputError(path, special_file(path))
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_file():
        if not kind_of(path):
            raise InputError(f"{path}: unsupported file type (want {', '.join(SUFFIXES)}, optionally .gz)")
        return [path]
    if (path / "dataset_dict.json").exists():
        splits = ", ".join(sorted(p.name for p in path.iterdir() if p.is_dir()))
        raise InputError(f"{path}: a DatasetDict; pass one split directory ({splits})")
    if (path / "state.json").exists():  # datasets.save_to_disk
        state = json.loads((path / "state.json").read_text())
        return [path / f["filename"] for f in state["_data_files"]]
    # A rejects file written beside an output is never input.
    files = sorted(p for p in path.iterdir() if p.is_file() and kind_of(p) and not p.name.endswith(".rejects.jsonl"))
    if not files:
        raise InputError(f"{path}: directory holds no data files ({', '.join(SUFFIXES)})")
    return files


def iter_chunks(path: str | Path, batch_rows: int = 1024) -> Iterator[Chunk]:
    """Stream every row behind `path` as chunks of at most `batch_rows` rows."""
    readers = {"jsonl": _jsonl, "json": _json, "csv": _csv, "parquet": _parquet, "arrow": _arrow}
    from sdpo_kit.io import reading

    for file in list_files(path):
        with reading(file, kind_of(file) + (".gz" if file.name.lower().endswith(".gz") else "")):
            yield from readers[kind_of(file)](file, batch_rows)


def _open_binary(file: Path):
    return gzip.open(file, "rb") if file.name.lower().endswith(".gz") else open(file, "rb")


def _batched(file: Path, rows: Iterator[tuple[int, dict | RawError]], batch_rows: int) -> Iterator[Chunk]:
    batch: list = []
    for item in rows:
        batch.append(item)
        if len(batch) >= batch_rows:
            yield Chunk(file.name, batch)
            batch = []
    if batch:
        yield Chunk(file.name, batch)


def _parse_line(text: str, row: int) -> tuple[int, dict | RawError]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return row, RawError("unparsable", f"invalid JSON: {e}", text.rstrip("\r\n"))
    if not isinstance(value, dict):
        return row, RawError("unparsable", f"expected a JSON object, got {type(value).__name__}", value)
    if _SURROGATE_ESCAPE.search(text):  # a valid pair (an emoji) decodes to one character: look at the value
        return _json_element(row, value)
    return row, value


def _jsonl_rows(lines: Iterator[bytes]) -> Iterator[tuple[int, dict | RawError]]:
    for row, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8-sig" if row == 1 else "utf-8")  # a BOM may open the file
        except UnicodeDecodeError as e:
            yield row, RawError("non_utf8", f"byte {e.start}: not UTF-8", line.decode("utf-8", "replace"))
            continue
        if text.strip():  # a blank line is not a row, but still counts for numbering
            yield _parse_line(text, row)


def _jsonl(file: Path, batch_rows: int) -> Iterator[Chunk]:
    with _open_binary(file) as f:
        yield from _batched(file, _jsonl_rows(f), batch_rows)


def _json(file: Path, batch_rows: int) -> Iterator[Chunk]:
    """A JSON array is parsed once, whole (JSON has no streaming row boundary); a .json file
    that is really JSON Lines falls back to the line reader."""
    with _open_binary(file) as f:
        data = f.read()
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        if text.lstrip().startswith("["):
            raise InputError(f"{file.name}:1: unparsable: not a valid JSON array") from None
        yield from _batched(file, _jsonl_rows(iter(io.BytesIO(data))), batch_rows)
        return
    if not isinstance(value, list):
        raise InputError(f"{file.name}:1: unparsable: expected a JSON array of objects, got {type(value).__name__}")
    del data, text
    yield from _batched(file, (_json_element(row, v) for row, v in enumerate(value, 1)), batch_rows)


def _json_element(row: int, value: Any) -> tuple[int, dict | RawError]:
    if not isinstance(value, dict):
        return row, RawError("unparsable", f"expected a JSON object, got {type(value).__name__}", value)
    dumped = json.dumps(value, ensure_ascii=False)
    found = _SURROGATE.search(dumped)
    if found:
        char = found.group()
        try:  # bytes that were not UTF-8 (surrogateescape) come back as U+FFFD in the raw row
            raw = json.loads(dumped.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
            detail = "text holds bytes that are not UTF-8"
        except UnicodeEncodeError:  # an escaped lone surrogate: only that row is lost, shown as U+FFFD
            raw = json.loads(_SURROGATE.sub("\ufffd", dumped))
            detail = f"text holds a lone surrogate \\u{ord(char):04x} (half of a UTF-16 pair, not a character)"
        return row, RawError("non_utf8", detail, raw)
    return row, value


def _csv(file: Path, batch_rows: int) -> Iterator[Chunk]:
    """CSV values are strings, so only the string formats (trl-standard, hh) fit in a CSV."""
    csv.field_size_limit(sys.maxsize)
    with _open_binary(file) as fb:
        f = io.TextIOWrapper(fb, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.DictReader(f)

        def rows() -> Iterator[tuple[int, dict | RawError]]:
            for row, record in enumerate(reader, 1):
                if None in record:  # more fields than the header names
                    yield row, RawError("unparsable", f"{len(record[None])} more fields than the header", record)
                elif any(isinstance(v, str) and _SURROGATE.search(v) for v in record.values()):
                    yield row, RawError("non_utf8", "text holds bytes that are not UTF-8", _fix_utf8(record))
                else:
                    yield row, record

        yield from _batched(file, rows(), batch_rows)


def _fix_utf8(record: dict) -> dict:
    return {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if isinstance(v, str) else v
            for k, v in record.items()}


def _arrow_chunks(file: Path, batches) -> Iterator[Chunk]:
    import pyarrow as pa

    row = 0
    for batch in batches:
        table = pa.Table.from_batches([batch])
        rows = list(enumerate(table.to_pylist(), row + 1))
        row += table.num_rows
        if rows:
            yield Chunk(file.name, rows, table)


def _parquet(file: Path, batch_rows: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    if not file.name.lower().endswith(".gz"):
        pf = pq.ParquetFile(file, page_checksum_verification=True)  # a flipped bit is an error, not new data
        yield from _arrow_chunks(file, pf.iter_batches(batch_size=batch_rows))
        return
    # Parquet needs random access; a gzipped one is inflated once to a temporary file.
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        with gzip.open(file, "rb") as src:
            shutil.copyfileobj(src, tmp)
        tmp.flush()
        yield from _arrow_chunks(file, pq.ParquetFile(tmp.name).iter_batches(batch_size=batch_rows))


def _arrow(file: Path, batch_rows: int) -> Iterator[Chunk]:
    """Arrow IPC stream files, as `datasets.save_to_disk` writes them."""
    import pyarrow as pa

    with (_open_binary(file) if file.name.lower().endswith(".gz") else pa.memory_map(str(file))) as source:
        yield from _arrow_chunks(file, _rebatch(pa.ipc.open_stream(source), batch_rows))


def _rebatch(batches, batch_rows: int):
    for batch in batches:
        for start in range(0, batch.num_rows, batch_rows):
            yield batch.slice(start, batch_rows)
