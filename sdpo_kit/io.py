"""Atomic file writes, and one owner per output folder: a crash never leaves a half-written output behind.

    python -c "from sdpo_kit.io import write_json; write_json('/tmp/x.json', {'a': float('nan')})"

Every writer goes to a temporary file in the destination's folder, then `os.replace`s it
into place (atomic on POSIX within one filesystem); a folder is written the same way
(`atomic_dir`). Every command that writes a folder holds `folder_lock(out, command)` while it
writes (a second live writer is refused in one line naming the holder); whose folder it is, is
`sdpo_kit/owner.py`'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import glob
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    return sha256_files([path])


def sha256_files(paths) -> str:
    """sha256 of several files' bytes one after another (in the order given), read in 1 MiB blocks."""
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def make_parents(path: Path) -> None:
    """`path.parent` created; a file in the way is named in one line (mkdir would only say 'File exists')."""
    for folder in [path.parent, *path.parent.parents]:
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(f"{folder}: is a file, so {path} cannot be written; pick another output path")
            break
    path.parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it onto `path` only if the block succeeds."""
    path = Path(path)
    make_parents(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def finite_json(obj: Any) -> tuple[Any, int]:
    """`obj` with every non-finite float (nan, inf) replaced by None, and how many were replaced:
    `Infinity`/`NaN` are not JSON, and a strict reader (jq, browsers, Rust) rejects the file."""
    if isinstance(obj, float):
        return (obj, 0) if math.isfinite(obj) else (None, 1)
    if isinstance(obj, dict):
        pairs = [(k, finite_json(v)) for k, v in obj.items()]
        return {k: v for k, (v, _) in pairs}, sum(n for _, (_, n) in pairs)
    if isinstance(obj, (list, tuple)):
        items = [finite_json(v) for v in obj]
        return [v for v, _ in items], sum(n for _, n in items)
    return obj, 0


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (non-finite numbers become null; see `finite_json` to count them first)."""
    clean, _ = finite_json(obj)
    return write_text(path, json.dumps(clean, indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return Path(path)


def write_parquet(path: str | os.PathLike, df, metadata: dict[str, str] | None = None) -> Path:
    """Write a polars DataFrame atomically; `metadata` goes into the parquet footer (key -> str).

    Every data page carries a CRC (parquet's page checksum), so a bit flipped on disk later is an
    error when read back with `read_parquet_checked`, never silently different numbers."""
    import pyarrow.parquet as pq

    table = df.to_arrow()
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
    return Path(path)


def read_parquet_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The custom key/value metadata of a parquet file (what `write_parquet(metadata=...)` stored)."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if not k.startswith(b"ARROW:")}


TMP_MARK = ".sdpo-tmp-"  # in every temp folder's name: `.{name}.sdpo-tmp-{pid}-{random}`


def _stale_temps(out: Path) -> list[Path]:
    """Temp folders next to `out` left by a killed process (its pid no longer runs)."""
    stale = []
    for p in out.parent.glob(f".{glob.escape(out.name)}{TMP_MARK}*"):
        pid = p.name[len(f".{out.name}{TMP_MARK}"):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            stale.append(p)
    return stale


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False, first_wins: bool = False) -> Iterator[Path]:
    """Yield a sibling temp folder; swap it onto `out` only if the block succeeds.

    A non-empty `out` is refused unless `overwrite`; a crash leaves `out` as it was. The folder
    and its files get the usual umask permissions (not mkdtemp's 0700 nor safetensors' 0600), and
    temp folders that a killed run left beside `out` are removed on the next write to it (a SIGKILL
    cannot clean up after itself). `first_wins` (several processes filling one shared cache folder):
    an `out` that exists when the block ends is kept and this block's folder dropped.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is a file, not a folder; pick another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    make_parents(out)
    for stale in _stale_temps(out):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_MARK}{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        for path in [tmp, *tmp.rglob("*")]:
            if path.is_dir():
                os.chmod(path, 0o777 & ~_UMASK)
            elif path.is_file() and not path.is_symlink():
                os.chmod(path, 0o666 & ~_UMASK)
        if out.exists() and first_wins:
            return  # the finally below drops ours
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}{TMP_MARK}{os.getpid()}-old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_out_dir(folder: str | os.PathLike, flag: str = "--out", keep: bool = False) -> None:
    """`folder` must be (or become) a folder we can write: checked before any model is loaded.

    A folder created for the check is removed again unless `keep` (several processes of one
    training run check the same folder at once: none may remove it under the others)."""
    from sdpo_kit.errors import InputError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{flag} {folder}", "is a file, not a folder; pass a new folder")
    existed = folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".sdpo-probe-"):
            pass
    except OSError as err:
        raise InputError(f"{flag} {folder}", special_file(folder) or f"cannot write there ({err.strerror or err})") from None
    if not existed and not keep:
        folder.rmdir()  # a refused run leaves nothing behind; the writers create it again


def same_or_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies inside it (symlinks resolved): writing `folder` would touch `path`."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def refuse_overwriting_input(inputs, out: str | os.PathLike, flag: str = "--out") -> None:
    """Raise UsageError when writing `out` (a file or folder) would replace or delete one of `inputs`."""
    from sdpo_kit.errors import UsageError

    for src in inputs:
        if same_or_inside(src, out):
            raise UsageError(f"{flag} {out}", f"would overwrite the input {src}; write somewhere else")


def special_file(path: str | os.PathLike) -> str:
    """What `path` is when it is there but is neither a regular file nor a folder ('' otherwise): a FIFO
    would block the reader (or be drained by the fingerprint before the rows are read), /dev/zero
    never ends, a symbolic link loop or dangling link leads nowhere; each is refused as what it is,
    not as a missing folder, an existing file or an empty one."""
    import errno
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "is a symbolic link loop (following it never reaches a file or folder): pass a real path"
        if os.path.islink(path):
            return f"is a symbolic link to {os.readlink(path)}, which does not exist: pass a real path"
        return ""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return ""
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "a special file")
    return f"is {kind}, not a regular file: write the data to a file first"


def check_parquet(path: str | os.PathLike, hint: str = "") -> Path:
    """`path` if it looks like a whole parquet file, else an InputError saying what it is instead
    (missing, a folder, empty, another format, truncated). `hint` says what to do about it."""
    from sdpo_kit.errors import InputError

    path = Path(path)
    if special_file(path):
        raise InputError(path, special_file(path))
    if path.is_dir():
        inside = "an empty folder" if not any(path.iterdir()) else "a folder"
        raise InputError(path, f"is {inside}, not a parquet file" + (f"; {hint}" if hint else ""))
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(size - 4, 0))
        tail = f.read(4)
    if head != b"PAR1":
        what = "an empty file" if size == 0 else "not a parquet file"
        raise InputError(path, what + (f"; {hint}" if hint else ""))
    if size < 12 or tail != b"PAR1":
        raise InputError(path, "truncated or corrupt parquet (no footer); write it again")
    return path


@contextlib.contextmanager
def reading(path: str | os.PathLike, kind: str = "parquet") -> Iterator[None]:
    """Turn a reader's error on a user's file (polars, pyarrow, gzip, zlib) into one InputError naming it."""
    import zlib

    import polars as pl
    import pyarrow as pa

    from sdpo_kit.errors import InputError

    try:
        yield
    except (pl.exceptions.PolarsError, pa.ArrowException, OSError, EOFError, zlib.error) as err:
        if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError)) or (
                isinstance(err, OSError) and err.errno is not None):
            raise  # the file system's answer, not the file's content: the CLI boundary words it
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise InputError(path, f"corrupt or truncated {kind} file, cannot be read ({first[:200]})") from err


def read_parquet_checked(path: str | os.PathLike, hint: str = "", **kw):
    """`pl.read_parquet(path)` with `check_parquet` first, page checksums verified, and read errors as one InputError."""
    import polars as pl
    import pyarrow.parquet as pq

    check_parquet(path, hint)
    with reading(path):
        # Page checksums verified where the writer stored them (sdpo_kit's writers always do).
        return pl.from_arrow(pq.read_table(path, page_checksum_verification=True, **kw))


def read_json_meta(path: str | os.PathLike, key: str) -> Any:
    """The JSON value stored under `key` in a parquet footer (None when absent); a damaged one is an InputError."""
    from sdpo_kit.errors import InputError

    raw = read_parquet_metadata(path).get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise InputError(path, f"footer metadata {key!r} is not valid JSON (corrupt file?)") from None


# ---------------------------------------------------------------- one owner per output

def lock_path(out: str | os.PathLike) -> Path:
    """`OUT.lock`, beside the output (a folder written by `atomic_dir` is swapped whole; the lock outlives it)."""
    return Path(out).with_name(Path(out).name + ".lock")


def _stat(path: Path):
    with contextlib.suppress(FileNotFoundError):
        return os.stat(path)


def _lock_holder(lock: Path) -> tuple[int, str | None]:  # (0, None): unreadable or empty
    try:
        pid, _, command = lock.read_text(encoding="utf-8").strip().partition(" ")
        return int(pid), command or None
    except (OSError, ValueError):
        return 0, None


@contextlib.contextmanager
def folder_lock(out: str | os.PathLike, command: str, flag: str = "--out") -> Iterator[Path]:
    """Hold `OUT.lock` ("pid command") while `command` writes `out`; a second live writer gets one
    InputError naming the holder. An flock on the open file serialises two starters; a lock whose
    pid no longer runs (a killed writer) is taken over. Removed when the block ends."""
    import fcntl

    from sdpo_kit.errors import InputError

    out, held = Path(out), False
    lock = lock_path(out)
    make_parents(lock)
    for _ in range(5):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held = True  # a live writer holds the flock
        if not held and os.fstat(fd).st_ino != getattr(_stat(lock), "st_ino", None):
            os.close(fd)  # removed by its holder meanwhile: take the new one
            continue
        pid, holder = _lock_holder(lock)
        if held or (pid and pid_alive(pid)):  # or a live pid in the file (a writer that locked by pid alone)
            os.close(fd)
            raise InputError(f"{flag} {out}", f"another `{holder or command}` (pid {pid or 'unknown'}) is writing "
                             f"it; wait for it to finish or stop it (or remove {lock} if that pid is not sdpo)")
        break
    else:
        raise InputError(f"{flag} {out}", f"could not take {lock}: it keeps changing hands")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)
