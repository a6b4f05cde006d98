"""`sdpo train` end to end on the tiny model and real AlpacaEval pairs.

    python -m pytest -q tests/test_train.py

Partitions are written here from a few short real pairs (conversational form), so these tests
need only the scorer and TRL. Every run goes through the CLI in-process, except the kill and
accelerate tests, which need real subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import shared
from sdpo_kit.cli import app

FAST = [
    "--max_length", "64", "--per_device_train_batch_size", "2", "--num_train_epochs", "1",
    "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none", "--seed", "0",
    "--save_strategy", "no", "--beta", "0.1", "--lr_scheduler_type", "constant",
]


def _messages(role: str, text: str) -> list[dict]:
    return [{"role": role, "content": text}]


def write_partitions(out: Path, steps: int, pairs: int, offset: int = 0) -> Path:
    """`steps` partitions of `pairs` short real pairs each, in the partitions-dir contract."""
    df = pl.read_parquet(shared("alpaca_eval_pairs.parquet"))
    df = df.filter(pl.col("prompt").str.len_chars() < 120).slice(offset, steps * pairs)
    rows = []
    for r in df.iter_rows(named=True):
        prompt, chosen, rejected = _messages("user", r["prompt"]), _messages("assistant", r["chosen"]), _messages("assistant", r["rejected"])
        key = json.dumps([prompt, chosen, rejected], ensure_ascii=False, sort_keys=True)
        pair_id = hashlib.sha256(key.encode()).hexdigest()[:16]
        rows.append({"pair_id": pair_id, "prompt": prompt, "chosen": chosen, "rejected": rejected, "source": r["source"]})
    frame = pl.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"strategy": "test", "steps": []}
    for t in range(steps):
        name = f"step_{t + 1}.parquet"
        frame.slice(t * pairs, pairs).write_parquet(out / name)
        manifest["steps"].append({"step": t + 1, "file": name, "pairs": pairs})
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def sdpo_train(*argv: str) -> None:
    result = CliRunner().invoke(app, ["train", *map(str, argv)])
    assert result.exit_code == 0, (result.output, result.exception)


def load_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def assert_exact_first_log(step_dir: Path) -> None:
    """At the first optimisation step the policy IS the reference: rewards 0, loss ln 2."""
    logs = json.loads((step_dir / "trainer_state.json").read_text())["log_history"]
    first = next(e for e in logs if "loss" in e)
    assert first["step"] == 1
    assert abs(first["rewards/chosen"]) < 1e-3 and abs(first["rewards/rejected"]) < 1e-3, first
    assert abs(first["loss"] - math.log(2)) < 1e-3, first
    assert json.loads((step_dir / "summary.json").read_text())["reference_exact"] is True


@pytest.fixture(scope="module")
def parts3(tmp_path_factory) -> Path:
    return write_partitions(tmp_path_factory.mktemp("parts3"), steps=3, pairs=4)


@pytest.mark.slow

def kill_in_step_2(out: Path, *args, timeout: float = 180) -> Path:
    """Start `sdpo train ... --out out` in its own process and SIGKILL it once step 2 has saved its
    third checkpoint (or fail after `timeout` s: a loaded 2-core machine needs the margin)."""
    proc = subprocess.Popen(_cli(*args, "--out", out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not list((out / "step_2" / "checkpoints").glob("checkpoint-[3-9]*")) and proc.poll() is None:
        assert time.time() < deadline, "the run never reached step 2's third checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return out

def test_three_steps_exact_reference_and_fingerprint_chain(tmp_path, parts3, tiny_model_dir):
    from sdpo_kit.io import read_parquet_metadata
    from sdpo_kit.models import load_model, model_fingerprint

    out = tmp_path / "run"
    sdpo_train("--partitions", parts3, "--model", tiny_model_dir, "--out", out, *FAST)
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["mode"] == "stepwise" and len(run["steps"]) == 3
    base_fp = model_fingerprint(load_model(tiny_model_dir)[0])
    assert run["base_fingerprint"] == base_fp
    previous = base_fp
    for t, rec in enumerate(run["steps"], 1):
        step_dir = out / f"step_{t}"
        assert_exact_first_log(step_dir)
        # Step t was scored by, and started from, exactly M_{t-1}'s weights.
        assert rec["reference_fingerprint"] == previous and rec["start_fingerprint"] == previous
        meta = json.loads(read_parquet_metadata(step_dir / "reference.parquet")["sdpo_kit.reference"])
        assert meta["fingerprint"] == previous
        model, tokenizer = load_model(step_dir / "model")
        assert model_fingerprint(model) == rec["model_fingerprint"] != previous  # saved M_t, and it moved
        assert tokenizer.chat_template  # the chat template travels with M_t
        summary = json.loads((step_dir / "summary.json").read_text())
        assert summary["pairs"] == 4 and summary["optimizer_steps"] == 2 and summary["step"] == t
        ref = pl.read_parquet(step_dir / "reference.parquet")
        assert summary["ref_margin_mean"] == pytest.approx(ref["margin"].mean())
        assert not (step_dir / "checkpoints").exists()
        previous = rec["model_fingerprint"]
    # config.yaml mirrors the flags and can be fed back as --config.
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["max_length"] == 64 and resolved["learning_rate"] == 1e-3 and resolved["mode"] == "stepwise"


def test_config_yaml_and_flag_override(tmp_path, parts3):
    from sdpo_kit.training.config import parse_train_args

    (tmp_path / "run.yaml").write_text(f"partitions: {parts3}\nout: {tmp_path}/r\nbeta: 0.3\nlora_r: 8\nmax_length: 128\n")
    cfg, args, overrides = parse_train_args(["--config", str(tmp_path / "run.yaml"), "--beta", "0.05"])
    assert cfg.lora_r == 8 and args.max_length == 128 and args.beta == 0.05  # flag beats YAML
    assert args.precompute_ref_log_probs and overrides["beta"] == 0.05
    assert not args.bf16 and not args.gradient_checkpointing  # CPU defaults
    with pytest.raises(ValueError, match="--mode must be one of .* got 'sdpo'"):
        parse_train_args(["--partitions", str(parts3), "--out", "x", "--mode", "sdpo"])
    with pytest.raises(ValueError, match="lora_dropout must be in \\[0, 1\\), got 1.5"):
        parse_train_args(["--partitions", str(parts3), "--out", "x", "--lora_dropout", "1.5"])


def test_existing_run_needs_resume(tmp_path, parts3, tiny_model_dir):
    out = tmp_path / "run"
    (out).mkdir()
    (out / "run.json").write_text("{}")
    result = CliRunner().invoke(app, ["train", "--partitions", str(parts3), "--model", str(tiny_model_dir), "--out", str(out), *FAST])
    assert result.exit_code == 2 and "pass --resume" in result.output


def test_mode_dpo_trains_once_on_all_partitions_against_base(tmp_path, parts3, tiny_model_dir):
    out = tmp_path / "dpo"
    sdpo_train("--partitions", parts3, "--model", tiny_model_dir, "--out", out, "--mode", "dpo", *FAST)
    run = json.loads((out / "run.json").read_text())
    assert run["mode"] == "dpo" and len(run["steps"]) == 1 and len(run["steps"][0]["partition"]) == 3
    assert run["steps"][0]["reference_fingerprint"] == run["base_fingerprint"]
    summary = json.loads((out / "step_1" / "summary.json").read_text())
    assert summary["pairs"] == 12 and summary["optimizer_steps"] == 6
    assert_exact_first_log(out / "step_1")


def test_lora_two_steps_merges_adapter_each_step(tmp_path, tiny_model_dir):
    parts = write_partitions(tmp_path / "parts", steps=2, pairs=4)
    out = tmp_path / "lora"
    sdpo_train("--partitions", parts, "--model", tiny_model_dir, "--out", out, "--lora_r", "4", "--lora_alpha", "8", *FAST)
    run = json.loads((out / "run.json").read_text())
    step1, step2 = run["steps"]
    assert step2["reference_fingerprint"] == step1["model_fingerprint"] != run["base_fingerprint"]
    for t in (1, 2):
        assert_exact_first_log(out / f"step_{t}")
        model_dir = out / f"step_{t}" / "model"
        assert not (model_dir / "adapter_config.json").exists()  # merged, a plain model
        assert not any("lora" in k for k in load_weights(model_dir))
    base, merged = load_weights(tiny_model_dir), load_weights(out / "step_1" / "model")
    changed = [k for k in base if not (base[k] == merged[k]).all()]
    assert changed and all("proj" in k for k in changed)  # only LoRA-targeted linears moved


def _batch_refs(order: str, scored, tiny_model_dir, tmp_path) -> list[float]:
    """The reference log-probs of the pairs, in the order the trainer's dataloader yields them."""
    from accelerate import PartialState

    from sdpo_kit.training import trainer as train_step
    from sdpo_kit.models import load_model
    from sdpo_kit.training.config import parse_train_args

    cfg, args, _ = parse_train_args(["--partitions", str(tmp_path), "--out", str(tmp_path / "o"), "--order", order, *FAST])
    args.output_dir = str(tmp_path / "o")
    model, tokenizer = load_model(tiny_model_dir)
    dataset = train_step.to_dataset(scored, tmp_path / f"ds_{order}", PartialState())
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    trainer = train_step.build_trainer(model, tokenizer, dataset, args)
    assert trainer.ref_model is None and not forwards  # TRL loaded no reference and ran no reference pass
    assert trainer.train_dataset["ref_chosen_logps"] == pytest.approx(scored["ref_chosen_logps"].to_list(), abs=1e-4)
    return [x for batch in trainer.get_train_dataloader() for x in batch["ref_chosen_logps"].tolist()]


def test_sequential_order_keeps_partition_order(tmp_path, tiny_model_dir):
    from accelerate import PartialState

    from sdpo_kit.models import load_model, model_fingerprint
    from sdpo_kit.training.config import parse_train_args, scorer_config
    from sdpo_kit.training.step import score_reference

    parts = write_partitions(tmp_path, steps=1, pairs=12)
    _, args, _ = parse_train_args(["--partitions", str(parts), "--out", "x", *FAST])
    model, tokenizer = load_model(tiny_model_dir)
    scored = score_reference([parts / "step_1.parquet"], model, tokenizer, scorer_config(args), model_fingerprint(model),
                             tmp_path, PartialState())
    expected = pl.Series(scored["ref_chosen_logps"]).cast(pl.Float32).to_list()
    sequential = _batch_refs("sequential", scored, tiny_model_dir, tmp_path)
    shuffled = _batch_refs("shuffled", scored, tiny_model_dir, tmp_path)
    assert sequential == pytest.approx(expected, abs=0)
    assert sorted(shuffled) == pytest.approx(sorted(expected), abs=0) and shuffled != sequential


def _cli(*argv) -> list[str]:
    return [sys.executable, "-c", "from sdpo_kit.cli import app; app()", "train", *map(str, argv)]


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, tiny_model_dir):
    parts = write_partitions(tmp_path / "parts", steps=2, pairs=8)
    flags = [*FAST, "--per_device_train_batch_size", "1", "--save_strategy", "steps", "--save_steps", "1"]
    clean = tmp_path / "clean"
    sdpo_train("--partitions", parts, "--model", tiny_model_dir, "--out", clean, *flags)

    killed = kill_in_step_2(tmp_path / "killed", "--partitions", parts, "--model", tiny_model_dir, *flags)
    run = json.loads((killed / "run.json").read_text())
    assert run["steps"][0]["status"] == "done" and run["steps"][1]["status"] != "done", "killed too late"
    mtime = (killed / "step_1" / "model" / "model.safetensors").stat().st_mtime

    sdpo_train("--partitions", parts, "--model", tiny_model_dir, "--out", killed, *flags, "--resume")
    assert (killed / "step_1" / "model" / "model.safetensors").stat().st_mtime == mtime  # step 1 not redone
    resumed = json.loads((killed / "run.json").read_text())["steps"][1]["resumed_from"]
    assert int(resumed.split("-")[1]) >= 1  # step 2 continued from a complete checkpoint, not from scratch
    a, b = load_weights(clean / "step_2" / "model"), load_weights(killed / "step_2" / "model")
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-6, name


@pytest.mark.slow
def test_accelerate_two_processes_matches_one(tmp_path, tiny_model_dir):
    parts = write_partitions(tmp_path / "parts", steps=2, pairs=8)
    bindir = str(Path(sys.executable).parent)
    two, one = tmp_path / "two", tmp_path / "one"
    sdpo = shutil.which("sdpo", path=bindir)
    cmd = [shutil.which("accelerate", path=bindir), "launch", "--multi_gpu", "--num_processes", "2", sdpo, "train"]
    flags = ["--partitions", parts, "--model", tiny_model_dir, "--order", "sequential", *FAST]
    done = subprocess.run([*cmd, *map(str, flags), "--out", str(two)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # 2 processes x 2 pairs see the same global batches as 1 process x 4 pairs.
    sdpo_train(*flags, "--out", one, "--per_device_train_batch_size", "4")
    run_two, run_one = (json.loads((d / "run.json").read_text()) for d in (two, one))
    assert run_two["steps"][1]["reference_fingerprint"] == run_two["steps"][0]["model_fingerprint"]
    for t in (1, 2):
        assert_exact_first_log(two / f"step_{t}")
        a, b = load_weights(one / f"step_{t}" / "model"), load_weights(two / f"step_{t}" / "model")
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
        # End-of-step figures are over the whole partition, gathered: the same under 1 and 2 processes.
        s1, s2 = (json.loads((d / f"step_{t}" / "summary.json").read_text()) for d in (one, two))
        assert s1["end_over"] == s2["end_over"] == "partition" and s1["end_pairs"] == s2["end_pairs"] == 8
        for key in ("sigmoid_loss_end", "reward_margin_end", "reward_accuracy_end"):
            assert s2[key] == pytest.approx(s1[key], abs=1e-5), key


def test_missing_partitions_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["train", "--partitions", str(tmp_path / "nope"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "does not exist" in result.output  # an input error (exit 1)


def test_step1_reference_reuses_curation_scores(tmp_path, tiny_model_dir, monkeypatch):
    """S scored the pairs during curation: step 1 reads them from the pair cache; step 2 scores with M1.

    The partitions carry S's score columns (as `sdpo curate split` writes them): step 2's
    reference must be M1's numbers, not those stale columns.
    """
    import sdpo_kit.scoring.cache
    from sdpo_kit.models import load_model, model_fingerprint

    monkeypatch.setenv("SDPO_KIT_CACHE", str(tmp_path / "cache"))
    parts = write_partitions(tmp_path / "parts", steps=2, pairs=4)
    for t in (1, 2):
        out = tmp_path / f"scored_{t}.parquet"
        score = CliRunner().invoke(app, ["curate", "score", str(parts / f"step_{t}.parquet"), "--model",
                                         str(tiny_model_dir), "--out", str(out), "--max-length", "64"])
        assert score.exit_code == 0, score.output
        shutil.copy(out, parts / f"step_{t}.parquet")
    s_fp = model_fingerprint(load_model(tiny_model_dir)[0])
    real, scored_with = sdpo_kit.scoring.cache.score_frame, []

    def recording(pairs, model, *args, **kwargs):
        scored_with.append(model_fingerprint(model))
        return real(pairs, model, *args, **kwargs)

    monkeypatch.setattr(sdpo_kit.scoring.cache, "score_frame", recording)
    sdpo_train("--partitions", parts, "--model", tiny_model_dir, "--out", tmp_path / "run", *FAST)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert s_fp not in scored_with  # step 1: straight from the curation cache
    m1, m2 = run["steps"][0]["model_fingerprint"], run["steps"][1]["model_fingerprint"]
    assert m1 == run["steps"][1]["reference_fingerprint"]
    # M1 on partition 1 (step 1's end-of-step figures), M1 on partition 2 (step 2's reference: M1
    # ran), M2 on partition 2 (step 2's end-of-step figures).
    assert scored_with == [m1, m1, m2]
    ref = pl.read_parquet(tmp_path / "run" / "step_1" / "reference.parquet").sort("pair_id")
    curated = pl.read_parquet(tmp_path / "scored_1.parquet").sort("pair_id")
    assert ref["ref_chosen_logps"].to_list() == curated["ref_chosen_logps"].to_list()
    for t in (1, 2):
        assert_exact_first_log(tmp_path / "run" / f"step_{t}")
