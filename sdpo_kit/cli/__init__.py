"""The `sdpo` command line: a thin layer over the library API.

    sdpo --help
    sdpo data inspect data/dpo_en_demo.json --json

Each command lives in its own module under `sdpo_kit/cli/` and imports torch, transformers
or trl only inside its body, so `sdpo --help` never pays for them.

Errors: commands raise; `SdpoGroup.main` is the one place that turns a user-caused error
(`sdpo_kit.errors.SdpoError`, a missing/unwritable file, bad YAML) into `error: <one line>` on
stderr and exit code 1 (failure) or 2 (usage). SDPO_DEBUG=1 keeps the traceback. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import sys

import typer
from typer.core import TyperGroup

from sdpo_kit.cli import data_cmd, report_cmd, score_cmd, split_cmd, train_cmd

# OSErrors a user causes (a path that is missing, a folder, unwritable, full disk), never bugs.
USER_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
USER_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}


def user_error(err: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for an error the user can fix; None for a bug."""
    from sdpo_kit.errors import SdpoError

    if isinstance(err, SdpoError):
        return err.exit_code, str(err)
    if isinstance(err, USER_OS_ERRORS) or (isinstance(err, OSError) and err.errno in USER_ERRNOS):
        # OSError("x: no such file") keeps its own words; OSError(2, "No such ...", "x") becomes "x: no such ...".
        if err.filename is None or err.strerror is None:
            return 1, str(err)
        where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
        return 1, f"{where}: {err.strerror}"
    if "yaml" in sys.modules and isinstance(err, sys.modules["yaml"].YAMLError):
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        return 2, f"{getattr(mark, 'name', 'config') if mark else 'config'}: {at}not valid YAML ({getattr(err, 'problem', None) or err})"
    return None


def one_line(text: str) -> str:
    """Messages are one line: a multi-line library message is folded onto it."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or "failed (no message)"


class SdpoGroup(TyperGroup):
    """The top-level group: the one error boundary of every `sdpo` command (console script,
    `app([...])` and typer's CliRunner all go through `main`)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            return super().main(*args, standalone_mode=standalone_mode, **kwargs)
        except Exception as err:
            answer = user_error(err)
            if answer is None or os.environ.get("SDPO_DEBUG") == "1":
                raise
            code, message = answer
            typer.echo(f"error: {one_line(message)}", err=True)
            # The console script and in-process callers (CliRunner, scripts/demo.py) all see SystemExit(code).
            raise SystemExit(code) from None


app = typer.Typer(
    cls=SdpoGroup,
    name="sdpo",
    help="Stepwise DPO: curate preference data easy-to-hard, train step by step, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect preference data and write data cards.", no_args_is_help=True)
curate_app = typer.Typer(help="Score pairs with a reference model; split them into partitions.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(curate_app, name="curate")

data_app.command("inspect")(data_cmd.inspect)
data_app.command("card")(split_cmd.card)
data_app.command("split")(data_cmd.split)
curate_app.command("score")(score_cmd.score)
curate_app.command("split")(split_cmd.split)
# `train` forwards unknown flags (any trl.DPOConfig field) to its own parser.
app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train_cmd.train)
app.command("eval")(report_cmd.evaluate)
app.command("report")(report_cmd.report)


def main() -> None:
    app()
