"""The `sdpo` command line: a registry of commands, each config dataclass(es) + `run` in one module.

    sdpo --help;  sdpo curate split -h;  sdpo curate split --config configs/curate_split.yaml --steps 2

Flags, `--config` YAML and help come from the config fields (`sdpo_kit.parser`); a command's module
loads only when it runs or shows its help. `SdpoGroup.main` is the one error boundary: a user-caused
error (`sdpo_kit.errors.SdpoError`, a missing/unwritable file, bad YAML) becomes `error: <one line>`
on stderr, exit 1 (failure) or 2 (usage); SDPO_DEBUG=1 keeps the traceback; a bug keeps its own.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import NamedTuple

import typer
from typer.core import TyperCommand, TyperGroup

class Command(NamedTuple):
    """One `sdpo` command: where its work and its configs are, and which parser reads its argv."""

    configs: str  # "module:Config[,Config]": the module whose `run(...)` does the work, and its config classes
    parser: str  # "module:function": (prog, config classes, argv) -> run's arguments, or None after --help


GENERIC = "sdpo_kit.parser:parse_run_args"  # flags and --config YAML over the config dataclasses
# Every command, with its parser named (`sdpo_kit.parser.run_command` calls it, then `run(*arguments)`).
COMMANDS = {
    ("data", "inspect"): Command("sdpo_kit.curate.inspect:InspectConfig", GENERIC),
    ("data", "split"): Command("sdpo_kit.curate.heldout:HeldoutConfig", GENERIC),
    ("data", "card"): Command("sdpo_kit.curate.card:CardConfig", GENERIC),
    ("curate", "score"): Command("sdpo_kit.curate.score:ScoreFileConfig,ScoreConfig", GENERIC),
    ("curate", "split"): Command("sdpo_kit.curate.split:SplitFileConfig,SplitConfig", GENERIC),
    # TRL's parser with sdpo train's keys; run(cfg, keys, args, given)
    ("curate", "crossfit"): Command("sdpo_kit.curate.crossfit:CrossfitConfig", "sdpo_kit.curate.crossfit:parse_run_args"),
    # TRL's parser with trl.DPOConfig beside ours; run(cfg, args, given): `given` guards --resume
    ("train",): Command("sdpo_kit.train.run:StepwiseConfig", "sdpo_kit.training.config:parse_run_args"),
    ("eval",): Command("sdpo_kit.report.evaluate:EvalConfig", GENERIC),
    ("report",): Command("sdpo_kit.report.html:ReportConfig", GENERIC),
}
GROUPS = {"data": "Inspect and split preference data; write data cards.",
          "curate": "Score pairs with a reference model; measure learning difficulty; split them into partitions."}
USER_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
USER_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}  # the user's, never bugs


def user_error(err: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for an error the user can fix; None for a bug."""
    from sdpo_kit.errors import SdpoError

    if isinstance(err, SdpoError):
        return err.exit_code, str(err)
    if isinstance(err, USER_OS_ERRORS) or (isinstance(err, OSError) and err.errno in USER_ERRNOS):
        # OSError("x: no such file") keeps its own words; OSError(2, "No such ...", "x") becomes "x: no such ...".
        if err.filename is None or err.strerror is None:
            return 1, str(err)
        from sdpo_kit.io import special_file

        where = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
        return 1, f"{where}: {special_file(err.filename) or err.strerror}"  # "File exists" on a link loop misleads
    return library_error(err)


DISK_FULL = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def library_error(err: BaseException) -> tuple[int, str] | None:
    """A library's wrapping of the user's file-system trouble: safetensors' or torch's write error on a
    full disk (during `train` or its `--resume`), pathlib's RuntimeError for an `--out` through a
    symbolic link loop (Python 3.11). Anything else stays a bug."""
    text = str(err)
    if any(words in text for words in DISK_FULL) or "file write failed" in text:
        first = " ".join(text.split())[:200]
        return 1, (f"the disk is full ({type(err).__name__}: {first}): free space or write to another disk, then "
                   "rerun (`sdpo train --resume` continues a run from its last finished step)")
    if isinstance(err, RuntimeError) and text.startswith("Symlink loop from "):
        return 1, f"{text.removeprefix('Symlink loop from ').strip(chr(39))}: a symbolic link loop (following it never reaches a " \
                  "file or folder): pass a real path"
    if "yaml" in sys.modules and isinstance(err, sys.modules["yaml"].YAMLError):
        mark = getattr(err, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark is not None else ""
        return 2, f"{getattr(mark, 'name', 'config') if mark else 'config'}: {at}not valid YAML ({getattr(err, 'problem', None) or err})"
    return None


def one_line(text: str) -> str:
    """Messages are one line: a multi-line library message is folded onto it."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) or "failed (no message)"


class SdpoGroup(TyperGroup):
    """The one error boundary of every `sdpo` command (the console script, `app([...])` and CliRunner)."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        try:
            return super().main(*args, standalone_mode=standalone_mode, **kwargs)
        except Exception as err:
            answer = user_error(err)
            if answer is None or os.environ.get("SDPO_DEBUG") == "1":
                raise
            code, message = answer
            _end_bars()
            typer.echo(f"error: {one_line(message)}", err=True)
            # The console script and in-process callers (CliRunner, scripts/demo.py) all see SystemExit(code).
            raise SystemExit(code) from None


def _end_bars() -> None:
    """Close the progress bars an error left open, so `error: ...` starts its own line (a full disk
    mid-step would otherwise print it after the step's bar, on the bar's line)."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or []):
        try:
            bar.close()
        except Exception:  # noqa: BLE001  (a bar that cannot close must not hide the error line)
            pass


def _command(group: typer.Typer, words: tuple[str, ...], spec: Command) -> None:
    from sdpo_kit import parser  # stdlib only: the command's own module loads when it runs or shows help

    class Command(TyperCommand):  # the help is the config's docstring, read only when a help is shown
        help = property(lambda self: parser.load(spec)[1][0].__doc__, lambda self, value: None)

    def command(ctx: typer.Context) -> None:
        parser.run_command("sdpo " + " ".join(words), spec, list(ctx.args))

    group.command(words[-1], cls=Command, add_help_option=False,
                  context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(command)


HELP = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(cls=SdpoGroup, name="sdpo", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, context_settings=HELP,
                  help="Stepwise DPO: curate preference data easy-to-hard, train step by step, report.")


@app.callback(invoke_without_command=True)
def _top(version: bool = typer.Option(False, "--version", help="Print the sdpo_kit version and exit.")) -> None:
    if version:
        from sdpo_kit import __version__

        typer.echo(f"sdpo_kit {__version__}")


groups = {name: typer.Typer(help=text, no_args_is_help=True, context_settings=HELP) for name, text in GROUPS.items()}
for name, sub in groups.items():
    app.add_typer(sub, name=name)
for words, spec in COMMANDS.items():
    _command(groups[words[0]] if len(words) > 1 else app, words, spec)

main = app  # the console script `sdpo` (pyproject.toml)
