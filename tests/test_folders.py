"""One owner per folder, and files that belong together (issue 22, items 1-2): the lock every
folder-writing command takes, the owner marker, atomic folders under kill-anywhere, and the
readers that check what they rely on.

    python -m pytest -q tests/test_folders.py
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from sdpo_kit.cli import app
from sdpo_kit.errors import InputError
from sdpo_kit.io import folder_lock, lock_path
from sdpo_kit.owner import OWNER_FILE, folder_owner
from test_hardening_curate import one_line_error  # exit code + exactly one `error:` line

FAST = ["--max_length", "64", "--per_device_train_batch_size", "2", "--num_train_epochs", "1",
        "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none", "--seed", "0",
        "--save_strategy", "no", "--beta", "0.1", "--lr_scheduler_type", "constant"]
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def ok(*args) -> str:
    result = run(*args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


def pairs_file(path: Path, n: int = 12, seed: int = 0) -> Path:
    w = lambda i, k: " ".join(WORDS[(i * 5 + j * 3 + seed) % len(WORDS)] for j in range(k))  # noqa: E731
    rows = [{"prompt": f"Q{seed}.{i}: {w(i, 3)}?", "chosen": f"Yes {i}: {w(i, 4)}", "rejected": f"No {i}: {w(i + 1, 2)}"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def sleeper():
    """A live process that is not us: the holder of a planted lock."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir):
    """Real inputs for every folder-writing command: pairs, a scored file, partitions, a run of
    the tiny model whose M1, M2 are copies of S (evaluating them costs one forward pass)."""
    from sdpo_kit.data import load_pairs

    root = tmp_path_factory.mktemp("folders")
    data = pairs_file(root / "pairs.jsonl")
    pairs = load_pairs(data).pairs
    scored = root / "scored.parquet"
    pairs.with_columns(pl.Series("margin", [float(i % 5) - 2 for i in range(pairs.height)])).write_parquet(scored)
    ok("curate", "split", scored, "--steps", "2", "--strategy", "easy-to-hard", "--out", root / "parts")
    run_dir = root / "run"
    steps = []
    for t in (1, 2):
        shutil.copytree(tiny_model_dir, run_dir / f"step_{t}" / "model")
        steps.append({"step": t, "dir": f"step_{t}", "status": "done", "model_fingerprint": None})
    (run_dir / "run.json").write_text(json.dumps({"mode": "stepwise", "base_model": str(tiny_model_dir),
                                                  "base_fingerprint": None, "beta": 0.1, "status": "done",
                                                  "steps": steps}))
    heldout = pairs_file(root / "heldout.jsonl", n=8, seed=1)
    return {"root": root, "data": data, "scored": scored, "parts": root / "parts", "run": run_dir,
            "heldout": heldout, "model": tiny_model_dir}


# ---------------------------------------------------------------- the lock


def test_lock_refuses_a_live_holder_takes_over_a_dead_one_and_is_removed(tmp_path, sleeper):
    out = tmp_path / "out"
    lock_path(out).write_text(f"{sleeper} sdpo train\n")
    with pytest.raises(InputError, match=rf"another `sdpo train` \(pid {sleeper}\) is writing it"):
        with folder_lock(out, "sdpo eval"):
            pass
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text(f"{dead.pid} sdpo train\n")  # a killed writer's lock
    with folder_lock(out, "sdpo eval") as lock:
        assert lock.read_text() == f"{os.getpid()} sdpo eval\n"
        with pytest.raises(InputError, match=rf"another `sdpo eval` \(pid {os.getpid()}\)"):
            with folder_lock(out, "sdpo report"):  # a second writer, even in this process (flock)
                pass
    assert not lock_path(out).exists()
    with pytest.raises(RuntimeError):
        with folder_lock(out, "sdpo eval"):
            raise RuntimeError("the command failed")
    assert not lock_path(out).exists()  # a failed command leaves no lock either


def test_owner_marker_and_folders_written_before_it(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / OWNER_FILE).write_text(json.dumps({"command": "sdpo data card"}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "run.json").write_text("{}")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.json").write_text(json.dumps({"sides": {}}))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    assert [folder_owner(tmp_path / x) for x in "abcd"] == ["sdpo data card", "sdpo train", "sdpo data split", None]


def _commands(inputs, tmp_path) -> dict[str, tuple[list, Path]]:
    """Each folder-writing command: its argv and the folder it writes."""
    i = inputs
    return {
        "sdpo data split": (["data", "split", i["data"], "--heldout", "0.25", "--out", tmp_path / "split"],
                            tmp_path / "split"),
        "sdpo curate split": (["curate", "split", i["scored"], "--steps", "2", "--out", tmp_path / "parts"],
                              tmp_path / "parts"),
        "sdpo data card": (["data", "card", i["data"], "--out", tmp_path / "card"], tmp_path / "card"),
        "sdpo train": (["train", "--partitions", i["parts"], "--model", i["model"], "--out", tmp_path / "run", *FAST],
                       tmp_path / "run"),
        "sdpo eval": (["eval", "--run", i["run"], "--data", i["heldout"], "--out", tmp_path / "eval"],
                      tmp_path / "eval"),
        "sdpo report": (["report", i["run"], "--out", tmp_path / "report"], tmp_path / "report"),
        "sdpo curate crossfit": (["curate", "crossfit", i["scored"], "--model", i["model"], "--folds", "2",
                                  "--seeds", "1", "--out", tmp_path / "d.parquet", *FAST], tmp_path / "d.parquet"),
    }


def test_a_second_live_writer_is_refused_for_every_folder_writing_command(inputs, tmp_path, sleeper):
    """Two writers, one folder: the second gets one line naming the holder and writes nothing."""
    for command, (argv, out) in _commands(inputs, tmp_path).items():
        lock_path(out).write_text(f"{sleeper} {command}\n")
        one_line_error(run(*argv), 1, f"{out}: another `{command}` (pid {sleeper}) is writing it")
        assert not out.exists() or not any(out.iterdir()), command
        assert lock_path(out).read_text() == f"{sleeper} {command}\n"  # the holder's lock stays
        lock_path(out).unlink()


def test_no_command_writes_into_another_commands_folder_or_over_its_input(inputs, tmp_path):
    i = inputs
    ok("data", "split", i["data"], "--heldout", "0.25", "--out", tmp_path / "split")
    split = tmp_path / "split"
    assert json.loads((split / OWNER_FILE).read_text())["command"] == "sdpo data split"
    # Its own input: `data split split/train.parquet --out split` would replace what it reads.
    one_line_error(run("data", "split", split / "train.parquet", "--out", split, "--overwrite"), 2,
                   "would overwrite the input")
    one_line_error(run("data", "split", i["data"], "--out", split), 1, "pass --overwrite")
    foreign = {
        "sdpo curate split": ["curate", "split", i["scored"], "--steps", "2", "--out", split, "--overwrite"],
        "sdpo data card": ["data", "card", i["data"], "--out", split, "--overwrite"],
        "sdpo eval": ["eval", "--run", i["run"], "--data", i["heldout"], "--out", split, "--overwrite"],
        "sdpo report": ["report", i["run"], "--out", split],
        "sdpo train": ["train", "--partitions", i["parts"], "--model", i["model"], "--out", split, *FAST],
    }
    before = folder_bytes(split)
    for command, argv in foreign.items():
        one_line_error(run(*argv), 2, f"--out {split}: holds the files of `sdpo data split`", f"`{command}`")
    one_line_error(run("train", "--partitions", i["parts"], "--model", i["model"], "--out", i["parts"] / "r", *FAST),
                   2, "is inside the partitions folder")
    one_line_error(run("report", i["run"], "--out", i["run"]), 2, "would overwrite the input")
    assert folder_bytes(split) == before
    ok("data", "split", i["data"], "--heldout", "0.5", "--out", split, "--overwrite")
    assert json.loads((split / "manifest.json").read_text())["config"]["heldout"] == 0.5


# ---------------------------------------------------------------- kill anywhere

KILLER = """
import os, signal, sys
import sdpo_kit.io as io
k, real, n = int(sys.argv[1]), io.atomic_path, [0]
def atomic_path(path):
    if n[0] == k:
        os.kill(os.getpid(), signal.SIGKILL)  # the machine dies while this file is written
    n[0] += 1
    return real(path)
io.atomic_path = atomic_path
from sdpo_kit.cli import app
app(sys.argv[2:])
"""


def test_data_split_killed_at_every_file_write_leaves_the_old_split_then_finishes(inputs, tmp_path):
    out = tmp_path / "split"
    ok("data", "split", inputs["data"], "--heldout", "0.25", "--validation", "0.25", "--seed", "0", "--out", out)
    old = folder_bytes(out)
    new_argv = ["data", "split", str(inputs["data"]), "--heldout", "0.5", "--seed", "1", "--out", str(out),
                "--overwrite"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for k in range(6):  # train, validation?, heldout, rejects, marker, manifest: each write, then none
        proc = subprocess.run([sys.executable, "-c", KILLER, str(k), *new_argv], env=env, capture_output=True)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        assert folder_bytes(out) == old, k  # entirely the old split after a kill at write k
    else:
        pytest.fail("the split never finished")
    assert k >= 4 and folder_bytes(out) != old  # it was killed at every write, then wrote the new split
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 1 and set(manifest["sides"]) == {"train", "heldout"}
    assert not (out / "validation.parquet").exists()  # the old side went with the old folder
    from sdpo_kit.io import sha256_file

    for side in manifest["sides"].values():
        assert sha256_file(out / side["file"]) == side["sha256"]
    ok("data", "split", inputs["data"], "--heldout", "0.5", "--seed", "1", "--out", out, "--overwrite")
    assert not [p for p in tmp_path.iterdir() if ".sdpo-tmp-" in p.name]  # killed runs' temp folders removed


def test_eval_failing_at_every_file_write_leaves_the_old_eval_then_finishes(inputs, tmp_path, monkeypatch):
    import sdpo_kit.io as io

    run_dir = tmp_path / "run"  # S alone: each attempt loads and scores one model
    run_dir.mkdir()
    meta = json.loads((inputs["run"] / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(meta | {"steps": []}))
    out = tmp_path / "eval"
    base = ["eval", "--run", run_dir, "--out", out, "--max_length", "64"]
    ok(*base, "--data", inputs["heldout"], "--limit", "4")
    old = folder_bytes(out)
    real, writes = io.atomic_path, []

    def failing(k):
        def atomic_path(path):
            if len(writes) == k:
                raise OSError(28, "No space left on device (injected)")
            writes.append(Path(path).name)
            return real(path)
        return atomic_path

    for k in range(200):
        writes.clear()
        monkeypatch.setattr(io, "atomic_path", failing(k))
        result = run(*base, "--data", inputs["heldout"], "--overwrite")
        monkeypatch.setattr(io, "atomic_path", real)
        if result.exit_code == 0:
            break
        assert "No space left" in result.output or "No space left" in str(result.exception), result.output
        assert folder_bytes(out) == old, (k, writes)  # scores and eval.json of the old evaluation, untouched
    assert k > 5 and "eval.json" in writes and "scores.parquet" in writes
    ev = json.loads((out / "eval.json").read_text())
    assert ev["data"]["loaded"] == 8 and [m["name"] for m in ev["models"]] == ["S"]
    from sdpo_kit.io import sha256_file

    assert ev["scores"]["sha256"] == sha256_file(out / "scores.parquet")
    assert not [p for p in tmp_path.iterdir() if ".sdpo-tmp-" in p.name or p.suffix == ".lock"]


# ---------------------------------------------------------------- files that belong together


def test_report_refuses_an_eval_that_is_not_the_runs_final_model_or_not_its_scores(inputs, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(inputs["run"], run_dir, ignore=shutil.ignore_patterns("eval"))
    ok("eval", "--run", run_dir, "--data", inputs["heldout"], "--max_length", "64", "--models", "S,M1")
    one_line_error(run("report", run_dir, "--out", tmp_path / "r"), 1, "covers S, M1 but the run's final model is M2")
    ok("eval", "--run", run_dir, "--data", inputs["heldout"], "--max_length", "64")
    ok("report", run_dir, "--out", tmp_path / "r")
    meta = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(meta | {"status": "running"}))  # eval before the last step
    one_line_error(run("report", run_dir, "--out", tmp_path / "r"), 1, "run.json status 'running'")
    (run_dir / "run.json").write_text(json.dumps(meta))
    other = tmp_path / "other"
    ok("eval", "--run", run_dir, "--data", inputs["heldout"], "--max_length", "64", "--limit", "3", "--out", other)
    shutil.copy(other / "scores.parquet", run_dir / "eval" / "scores.parquet")  # one eval's table, another's verdict
    one_line_error(run("report", run_dir, "--out", tmp_path / "r"), 1, "scores.parquet: is not the table written "
                   "with eval.json")


def test_train_checks_each_partition_against_the_manifest(inputs, tmp_path):
    parts = tmp_path / "parts"
    shutil.copytree(inputs["parts"], parts)
    manifest = json.loads((parts / "manifest.json").read_text())
    from sdpo_kit.io import sha256_file

    assert [s["sha256"] for s in manifest["steps"]] == [sha256_file(parts / s["file"]) for s in manifest["steps"]]
    shutil.copy(parts / "step_1.parquet", parts / "step_2.parquet")  # a partition replaced after the split
    one_line_error(run("train", "--partitions", parts, "--model", inputs["model"], "--out", tmp_path / "r", *FAST), 1,
                   "step_2.parquet: is not the step 2 file manifest.json describes")
    from sdpo_kit.runs import partition_files, partitions_digest, partitions_unchanged

    meta = {"partitions_sha256": partitions_digest(inputs["parts"], partition_files(inputs["parts"]))}
    assert partitions_unchanged(meta, inputs["parts"]) and not partitions_unchanged(meta, parts)


def test_a_failed_rescore_leaves_no_old_parquet_beside_new_rejects(tmp_path, tiny_model_dir):
    from sdpo_kit.scoring.files import check_rejects

    data, out = pairs_file(tmp_path / "x.jsonl", n=4), tmp_path / "scored.parquet"
    ok("curate", "score", data, "--model", tiny_model_dir, "--out", out, "--max_length", "64")
    assert check_rejects(out).read_text() == ""
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "same", "rejected": "same"}) + "\n"
                            for i in range(3)))  # every row rejected: the re-score fails
    one_line_error(run("curate", "score", data, "--model", tiny_model_dir, "--out", out, "--max_length", "64"), 1,
                   "no valid pairs to score")
    assert not out.exists() and len((tmp_path / "scored.rejects.jsonl").read_text().splitlines()) == 3
    ok("curate", "score", pairs_file(data, n=4), "--model", tiny_model_dir, "--out", out, "--max_length", "64")
    (tmp_path / "scored.rejects.jsonl").write_text('{"reason": "identical"}\n')  # another run's rejects
    with pytest.raises(InputError, match="is not the rejects file written with scored.parquet"):
        check_rejects(out)
