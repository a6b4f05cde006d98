"""The one error type the CLI answers in one line (no traceback unless SDPO_DEBUG=1).

    python -c "from sdpo_kit.errors import InputError; raise InputError('x.jsonl', 'row 3: chosen is empty')"

Library code raises `InputError` (bad data or files: exit 1) or `UsageError` (bad flags or
config: exit 2) for anything the user can fix; the single handler in `sdpo_kit/cli` prints
`error: <message>` and exits with `exit_code`. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class SdpoError(Exception):
    """A problem the user can fix. `str(err)` is the whole one-line message."""

    exit_code = 1

    def __init__(self, *parts: object) -> None:
        # InputError(path, "row 3: problem") -> "path: row 3: problem"
        super().__init__(": ".join(str(p) for p in parts if p is not None and str(p) != ""))


class InputError(SdpoError, ValueError):
    """Bad input data, files or folders (exit 1). A ValueError too, so older callers still catch it."""

    exit_code = 1


class UsageError(SdpoError, ValueError):
    """Bad flags, config keys or values (exit 2, like argparse)."""

    exit_code = 2
