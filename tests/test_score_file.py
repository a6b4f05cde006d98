"""`sdpo curate score` end to end: CLI, rejects, provenance, cache, SIGKILL-then-resume, accelerate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from sdpo_kit.cli import app
from sdpo_kit.io import read_parquet_metadata
from sdpo_kit.scoring.frame import ScoreConfig, score_frame

sys.path.insert(0, str(Path(__file__).parent))
from test_score import mixed_pairs, text  # noqa: E402

SDPO = Path(sys.executable).with_name("sdpo")


def write_input(path: Path, n_extra: int = 0) -> Path:
    """TRL-conversational JSONL: mixed_pairs(), one identical pair (a data-layer reject), n_extra more."""
    frame = mixed_pairs()
    rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in frame.iter_rows(named=True)]
    same = [{"role": "assistant", "content": "same"}]
    rows.insert(3, {"prompt": [{"role": "user", "content": "q"}], "chosen": same, "rejected": same})
    for i in range(n_extra):
        rows.append({"prompt": [{"role": "user", "content": text(5 + i % 9, i)}],
                     "chosen": [{"role": "assistant", "content": text(4 + i % 13, i + 1)}],
                     "rejected": [{"role": "assistant", "content": text(3 + i % 7, i + 2)}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rejects_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.with_name(out.stem + ".rejects.jsonl").read_text().splitlines()]


def test_cli_writes_scores_rejects_and_provenance(tiny_model_dir, tmp_path):
    from sdpo_kit.data import load_pairs
    from sdpo_kit.models import load_model, model_fingerprint

    data, out = write_input(tmp_path / "pairs.jsonl"), tmp_path / "scored.parquet"
    result = CliRunner().invoke(app, ["curate", "score", str(data), "--model", str(tiny_model_dir), "--out", str(out),
                                      "--max-length", "96", "--shard-rows", "4", "--no-cache"])
    assert result.exit_code == 0, result.output
    assert f"scored 8 pairs -> {out}" in result.output
    assert "rejected 3 (" in result.output and "prompt_too_long 1" in result.output
    reasons = {(r["row"], r["reason"]) for r in rejects_of(out)}
    assert reasons == {(4, "identical"), (9, "prompt_too_long"), (10, "identical_truncated")}  # 1-based input rows
    scored = pl.read_parquet(out)
    model, tok = load_model(tiny_model_dir)
    expected, _ = score_frame(load_pairs(data).pairs, model, tok, ScoreConfig(max_length=96), progress=False)
    assert scored["pair_id"].to_list() == expected["pair_id"].to_list()
    assert scored.columns == expected.columns
    for col in ("ref_chosen_logps", "ref_rejected_logps", "margin"):
        assert scored[col].to_list() == pytest.approx(expected[col].to_list(), rel=1e-6, abs=1e-5)
    meta = json.loads(read_parquet_metadata(out)["sdpo_kit.scorer"])
    assert meta["fingerprint"] == model_fingerprint(model) and meta["max_length"] == 96
    assert meta["truncation_mode"] == "keep_start" and meta["dtype"] == "float32" and len(meta["chat_template_sha256"]) == 64
    assert not out.with_name(out.name + ".parts").exists()


def test_rescoring_hits_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    import sdpo_kit.scoring.logps as logps
    import sdpo_kit.scoring.files as score

    monkeypatch.setenv("SDPO_KIT_CACHE", str(tmp_path / "cache"))
    data = write_input(tmp_path / "pairs.jsonl", n_extra=5)
    first = score.score_file(score.ScoreFileConfig(data, tmp_path / "a.parquet", model=tiny_model_dir),
                             ScoreConfig(max_length=96), progress=False)

    def no_forward(*args, **kwargs):
        raise AssertionError("a cached pair went through the model again")

    monkeypatch.setattr(logps.Scorer, "run", no_forward)
    second = score.score_file(score.ScoreFileConfig(data, tmp_path / "b.parquet", model=tiny_model_dir, shard_rows=3),
                              ScoreConfig(max_length=96), progress=False)
    assert pl.read_parquet(first).equals(pl.read_parquet(second))
    assert rejects_of(first) == rejects_of(second)
    with pytest.raises(AssertionError, match="cached pair"):  # other settings = other key = real work
        score.score_file(score.ScoreFileConfig(data, tmp_path / "c.parquet", model=tiny_model_dir),
                         ScoreConfig(max_length=64), progress=False)


def _cli(data, out, model, *extra):
    return [str(SDPO), "curate", "score", str(data), "--model", str(model), "--out", str(out),
            "--max-length", "96", "--no-cache", *extra]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tiny_model_dir, tmp_path, monkeypatch):
    import sdpo_kit.scoring.cache as run

    data = write_input(tmp_path / "pairs.jsonl", n_extra=300)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    reference = tmp_path / "whole.parquet"
    subprocess.run(_cli(data, reference, tiny_model_dir, "--shard-rows", "4"), check=True, env=env,
                   capture_output=True)

    out = tmp_path / "killed.parquet"
    parts = out.with_name(out.name + ".parts")
    proc = subprocess.Popen(_cli(data, out, tiny_model_dir, "--shard-rows", "4"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while len(list(parts.glob("shard_*.sha256"))) < 3 and proc.poll() is None:  # checksums mark finished shards
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("shard_*.sha256")))
    assert not out.exists() and done >= 3, "the run finished before it could be killed"

    scored = []
    real = run.score_frame
    monkeypatch.setattr(run, "score_frame", lambda pairs, *a, **k: (scored.append(pairs.height), real(pairs, *a, **k))[1])
    result = CliRunner().invoke(app, _cli(data, out, tiny_model_dir, "--shard-rows", "4")[1:])
    assert result.exit_code == 0, result.output
    assert sum(scored) <= 318 - 4 * done + 1  # the finished shards were not scored again
    assert pl.read_parquet(out).equals(pl.read_parquet(reference))
    assert rejects_of(out) == rejects_of(reference)


@pytest.mark.slow
def test_accelerate_two_processes_equal_one(tiny_model_dir, tmp_path):
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("accelerate CLI not installed")
    data = write_input(tmp_path / "pairs.jsonl", n_extra=30)
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    single, multi = tmp_path / "single.parquet", tmp_path / "multi.parquet"
    subprocess.run(_cli(data, single, tiny_model_dir, "--shard-rows", "5"), check=True, env=env, capture_output=True)
    proc = subprocess.run([str(accelerate), "launch", "--num_processes", "2", "--num_machines", "1", "--cpu",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
                           "--no_python", *_cli(data, multi, tiny_model_dir, "--shard-rows", "5")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("scored 38 pairs") == 1  # printed by the main process only
    a, b = pl.read_parquet(single), pl.read_parquet(multi)
    assert a["pair_id"].to_list() == b["pair_id"].to_list()
    assert a.drop("ref_chosen_logps", "ref_rejected_logps").columns == b.drop("ref_chosen_logps", "ref_rejected_logps").columns
    for col in ("ref_chosen_logps", "ref_rejected_logps", "margin"):  # other thread counts may move the last bits
        assert a[col].to_list() == pytest.approx(b[col].to_list(), rel=1e-9, abs=1e-9)
    assert rejects_of(single) == rejects_of(multi)
