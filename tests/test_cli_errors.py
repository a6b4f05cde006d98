"""The one CLI error boundary (`sdpo_kit.cli.SdpoGroup.main`): `error: <one line>` on stderr,
exit 1 for failures and 2 for usage errors, a traceback only with SDPO_DEBUG=1, bugs untouched.

Checked through the console-script entry point (a real process), typer's CliRunner and
`app([...], standalone_mode=False)` as scripts/demo.py calls it.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sdpo_kit.cli import app, user_error
from sdpo_kit.errors import InputError, UsageError

REPO = Path(__file__).resolve().parent.parent


def test_user_error_maps_what_the_user_can_fix():
    assert user_error(InputError("x.jsonl", "row 3: chosen is empty")) == (1, "x.jsonl: row 3: chosen is empty")
    assert user_error(UsageError("--steps 0: need at least 1")) == (2, "--steps 0: need at least 1")
    assert user_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "a/b.parquet")) == (
        1, "a/b.parquet: No such file or directory")
    assert user_error(PermissionError(errno.EACCES, "Permission denied", "/root/x")) == (1, "/root/x: Permission denied")
    assert user_error(OSError(errno.ENOSPC, "No space left on device", "/tmp/x")) == (1, "/tmp/x: No space left on device")
    assert user_error(FileExistsError("runs/x exists and is not empty; pass --overwrite")) == (
        1, "runs/x exists and is not empty; pass --overwrite")
    try:
        yaml.safe_load("a: [1, 2\nb: 3")
    except yaml.YAMLError as err:
        code, message = user_error(err)
        assert code == 2 and "line " in message and "not valid YAML" in message
    for bug in (RuntimeError("boom"), KeyError("x"), ValueError("plain"), OSError("no errno")):
        assert user_error(bug) is None  # a bug keeps its traceback


def _cli(args, env=None):
    code = "import sys; sys.argv[0] = 'sdpo'; from sdpo_kit.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=120)


def test_console_script_one_line_and_debug_traceback(tmp_path):
    missing = tmp_path / "typo.jsonl"
    proc = _cli(["data", "inspect", missing])
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [f"error: {missing}: no such file or directory"]
    debug = _cli(["data", "inspect", missing], env={"SDPO_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "FileNotFoundError" in debug.stderr


def test_cli_runner_and_in_process_calls(tmp_path):
    bad = tmp_path / "x.jsonl"
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    result = CliRunner().invoke(app, ["data", "inspect", str(bad), "--format", "nope"])
    assert result.exit_code == 2 and result.stderr.startswith("error: --format: unknown format 'nope'")
    assert len(result.stderr.splitlines()) == 1
    # scripts/demo.py: app([...], standalone_mode=False) sees SystemExit with the code.
    with pytest.raises(SystemExit) as exit_:
        app(["data", "inspect", str(tmp_path / "missing.jsonl")], standalone_mode=False)
    assert exit_.value.code == 1
    # SDPO_DEBUG=1: the original exception goes up (CliRunner records it with its traceback).
    debug = CliRunner().invoke(app, ["data", "inspect", str(bad), "--format", "nope"], env={"SDPO_DEBUG": "1"})
    assert isinstance(debug.exception, UsageError) and debug.exc_info[2] is not None


def test_unwritable_output_is_one_line(tmp_path):
    """Why: 'an unwritable output folder (every command)': a --out below a file cannot be created."""
    data = tmp_path / "x.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(app, ["data", "card", str(data), "--out", str(blocker / "card")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(blocker) in lines[0], result.stderr
    rejects = CliRunner().invoke(app, ["data", "inspect", str(data), "--rejects", str(blocker / "r.jsonl")])
    assert rejects.exit_code == 1 and rejects.stderr.startswith("error: ") and len(rejects.stderr.splitlines()) == 1


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    import sdpo_kit.curate.inspect as stats

    def broken(*a, **k):
        raise RuntimeError("a bug, not the user's fault")

    monkeypatch.setattr(stats, "inspect_data", broken)
    data = tmp_path / "x.jsonl"
    data.write_text('{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    result = CliRunner().invoke(app, ["data", "inspect", str(data)])
    assert isinstance(result.exception, RuntimeError) and "error:" not in result.stderr


def test_unknown_flags_get_did_you_mean_and_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["curate", "score", "x.jsonl", "--out", "y.parquet", "--limt", "3"])
    assert result.exit_code == 2 and "--limt" in result.output and "--limit" in result.output


def test_train_flags_no_abbreviation_and_did_you_mean(tmp_path):
    for flag in ("--learnig_rate", "--learning_rat"):
        result = CliRunner().invoke(app, ["train", "--partitions", str(tmp_path), "--out", str(tmp_path / "r"),
                                          flag, "5e-6"])
        assert result.exit_code == 2 and "did you mean --learning_rate" in result.stderr, result.output
