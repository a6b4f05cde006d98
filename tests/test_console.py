"""A quiet, honest console: one training bar for the whole run, no library side-bars or harmless
warnings, each result printed once, weights written like every other file.

    python -m pytest -q tests/test_console.py
"""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from sdpo_kit.cli import app
from sdpo_kit.console import planned_steps
from test_train import FAST, write_partitions


def _args(batch=2, accum=1, epochs=1.0, max_steps=-1):
    return SimpleNamespace(per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                           num_train_epochs=epochs, max_steps=max_steps)


def test_planned_steps_by_hand():
    assert planned_steps(25, _args()) == 13          # ceil(25 / 2)
    assert planned_steps(25, _args(), world=2) == 7  # ceil(25 / 4)
    assert planned_steps(25, _args(accum=2)) == 6    # 13 batches // 2 (transformers drops the remainder)
    assert planned_steps(25, _args(epochs=3)) == 39
    assert planned_steps(25, _args(max_steps=5)) == 5
    assert planned_steps(1, _args(accum=4)) == 1     # never 0 for a non-empty partition


def test_train_prints_one_run_bar_and_no_side_bars(tmp_path, tiny_model_dir):
    # A fresh interpreter without TQDM_DISABLE (conftest sets it for this process, and tqdm reads
    # it at import): every library bar would show here unless sdpo silences it.
    import subprocess
    import sys

    from conftest import REPO

    parts = write_partitions(tmp_path / "parts", steps=2, pairs=5)
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", "from sdpo_kit.cli import main; main()", "train", "--partitions",
                           str(parts), "--model", str(tiny_model_dir), "--out", str(run), *FAST],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = (done.stdout + done.stderr).replace("\r", "\n")
    # One bar counts every optimiser step of the run: ceil(5/2) + ceil(5/2) = 6, with rate and ETA.
    finals = [ln for ln in out.splitlines() if "sdpo train step 2/2" in ln and "6/6" in ln]
    assert finals and "opt step" in finals[-1] and "<00:00" in finals[-1]
    assert not any("/3 [" in ln for ln in out.splitlines() if "sdpo train step" in ln)  # never a per-step total
    for noise in ("Computing reference log probs", "Saving the dataset", "Tokenizing", "Dropping fully truncated",
                  "Caching reference", "Flattening", "Loading weights", "FutureWarning", "gradient_checkpointing",
                  "{'loss'", "train_runtime"):
        assert noise not in out, noise
    assert out.count("[sdpo train] step 1/2") == 1 and out.count("[sdpo train] step 2/2") == 1
    assert out.count("run: ") == 1
    # Weights get the umask's permissions like config.json (safetensors writes 0600).
    model = run / "step_2" / "model"
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in model.iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o666 & ~mask


def test_bad_train_flag_is_not_preceded_by_a_warning(tmp_path):
    result = CliRunner().invoke(app, ["train", "--partitions", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "Warning" not in result.output and "gradient_checkpointing" not in result.output


def test_curate_score_prints_its_result_once(tmp_path, tiny_model_dir):
    from conftest import shared

    import polars as pl

    pl.read_parquet(shared("alpaca_eval_pairs.parquet")).filter(pl.col("prompt").str.len_chars() < 150).head(4) \
        .write_parquet(tmp_path / "p.parquet")
    result = CliRunner().invoke(app, ["curate", "score", str(tmp_path / "p.parquet"), "--model", str(tiny_model_dir),
                                      "--out", str(tmp_path / "s.parquet"), "--max-length", "96"])
    assert result.exit_code == 0, result.output
    assert result.output.count("scored 4 pairs") == 1 and result.output.count("rejected 0") == 1


@pytest.mark.parametrize("rank, prints", [("0", True), ("1", False)])
def test_only_rank_zero_prints(monkeypatch, rank, prints):
    from sdpo_kit.console import main_process

    monkeypatch.setenv("RANK", rank)
    assert main_process() is prints


@pytest.mark.parametrize("rank", ["0", "1"])
def test_note_writes_one_prefixed_line_from_rank_zero_only(monkeypatch, capsys, rank):
    from sdpo_kit.console import note

    monkeypatch.setenv("RANK", rank)
    note("sdpo eval", "scoring M1 ...")
    note("sdpo_kit", "default model cached", err=True)
    out, err = capsys.readouterr()
    if rank == "0":
        assert (out, err) == ("[sdpo eval] scoring M1 ...\n", "[sdpo_kit] default model cached\n")
    else:
        assert (out, err) == ("", "")


def test_no_command_writes_its_own_prefix():
    """Every `[sdpo …]` line goes through console.note: no module spells the prefix itself."""
    import pathlib
    import re

    import sdpo_kit

    root = pathlib.Path(sdpo_kit.__file__).parent
    hand = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") if p.name != "console.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"""["']\[(sdpo[ _]|\{prog\}|\{PROG\})""", line)]
    assert hand == []
