"""Issue 11, train/eval/report side: nothing silently wrong.

    python -m pytest -q tests/test_hardening_run.py

- `train --resume` restores the run's own settings and refuses changed ones, naming each;
- run.json records S as an absolute path + fingerprint, the partitions + their sha256, and
  every resolved setting; eval/report check every model they load against that record;
- end-of-step figures are over the whole partition (checked against a plain torch forward);
- bad input to train/eval/report is one line, exit 1 (input) or 2 (usage), no traceback;
- the report escapes data and paths, and is written atomically as a folder.

Every command runs through the CLI in-process (typer's CliRunner) on the tiny model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import build_tiny_model
from sdpo_kit.cli import app
from test_train import FAST, kill_in_step_2, write_partitions

# Fewer optimiser steps per step (4 pairs / batch 2 = 2) than TRL's logging_steps (10).
_i = FAST.index("--logging_steps")
QUIET = FAST[:_i] + FAST[_i + 2:]


def sdpo(*argv) -> tuple[int, str]:
    """Exit code and everything the command printed (stdout + stderr)."""
    result = CliRunner().invoke(app, [str(a) for a in argv])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def ok(*argv) -> str:
    code, out = sdpo(*argv)
    assert code == 0, out
    return out


def one_line_error(code: int, out: str, expected_code: int, *needles: str) -> str:
    """The answer to bad input: the expected exit code, one `error:` line, no traceback."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert code == expected_code, out
    assert len(errors) == 1 and "Traceback" not in out, out
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


# ---------------------------------------------------------------- resume restores, or refuses


@pytest.mark.slow
def test_resume_alone_restores_the_runs_settings_bit_identical(tmp_path, tiny_model_dir):
    """Killed in step 2, resumed with only --partitions/--out/--resume: same weights as uninterrupted.

    The run uses non-default settings (batch 1, 1 epoch, max_length 64, lr 1e-3, ...): with TRL's
    defaults (batch 8, 3 epochs, max_length 1024) step 2 would take 3 optimiser steps, not 8.
    """
    parts = write_partitions(tmp_path / "parts", steps=2, pairs=8)
    flags = [*FAST, "--per_device_train_batch_size", "1", "--save_strategy", "steps", "--save_steps", "1"]
    clean = tmp_path / "clean"
    ok("train", "--partitions", parts, "--model", tiny_model_dir, "--out", clean, *flags)

    killed = kill_in_step_2(tmp_path / "killed", "--partitions", parts, "--model", tiny_model_dir, *flags)
    assert run_json(killed)["steps"][1]["status"] != "done", "killed too late"

    out = ok("train", "--partitions", parts, "--out", killed, "--resume")  # no --model, no settings
    assert "resuming from" in out
    a, b = run_json(clean), run_json(killed)
    assert b["steps"][1]["resumed_from"].startswith("checkpoint-")
    assert [s["model_fingerprint"] for s in a["steps"]] == [s["model_fingerprint"] for s in b["steps"]]
    assert b["settings"] == a["settings"] and b["settings"]["trl"]["per_device_train_batch_size"] == 1
    state = json.loads((killed / "step_2" / "trainer_state.json").read_text())
    assert state["global_step"] == 8 and state["train_batch_size"] == 1  # 8 pairs, batch 1, 1 epoch
    print(f"\nresume bit-identity: clean M2 {a['steps'][1]['model_fingerprint']} == "
          f"resumed M2 {b['steps'][1]['model_fingerprint']} (resumed from {b['steps'][1]['resumed_from']})")


@pytest.fixture(scope="module")
def done_run(tmp_path_factory, tiny_model_dir) -> tuple[Path, Path]:
    """A finished 1-step run (4 pairs) with max_length 64 and beta 0.1."""
    root = tmp_path_factory.mktemp("done")
    parts = write_partitions(root / "parts", steps=1, pairs=4)
    out = root / "run"
    ok("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *FAST)
    return parts, out


def test_run_json_records_what_the_run_used(done_run, tiny_model_dir):
    from sdpo_kit.models import load_model, model_fingerprint
    from sdpo_kit.runs import partitions_digest

    parts, out = done_run
    run = run_json(out)
    assert run["base_model"] == str(Path(tiny_model_dir).resolve()) and Path(run["base_model"]).is_absolute()
    assert run["base_fingerprint"] == model_fingerprint(load_model(tiny_model_dir)[0])
    assert run["partitions"] == str(parts.resolve())
    import hashlib

    assert run["partitions_sha256"]["manifest_sha256"] == hashlib.sha256((parts / "manifest.json").read_bytes()).hexdigest()
    assert run["partitions_sha256"] == partitions_digest(parts, [parts / "step_1.parquet"])
    trl = run["settings"]["trl"]
    # Flags and defaults alike: the run can be rebuilt from its record.
    assert trl["max_length"] == 64 and trl["beta"] == 0.1 and trl["per_device_train_batch_size"] == 2
    assert trl["gradient_accumulation_steps"] == 1 and trl["truncation_mode"] == "keep_start"
    assert run["settings"]["sdpo"] == {"mode": "stepwise", "order": "shuffled", "lora_r": 0, "lora_alpha": 16,
                                       "lora_dropout": 0.0, "lora_target_modules": "all-linear",
                                       "reference_schedule": "stepwise", "ref_mix_alpha": 0.5, "trim_padding": False}


def test_resume_refuses_changed_settings_naming_each(done_run, tmp_path, tiny_model_dir, smollm_tokenizer):
    parts, out = done_run
    before = (out / "run.json").read_text()
    other_parts = write_partitions(tmp_path / "other", steps=1, pairs=4, offset=8)
    other_model = build_tiny_model(tmp_path / "other_model", smollm_tokenizer, seed=1)
    cases = [
        (["--partitions", parts, "--max_length", "128"], ["max_length 64 -> 128"]),
        (["--partitions", other_parts], ["partitions", str(other_parts.resolve())]),
        (["--partitions", parts, "--model", other_model], ["model", str(other_model.resolve())]),
        (["--partitions", parts, "--per_device_train_batch_size", "8", "--lora_r", "4"],
         ["per_device_train_batch_size 2 -> 8", "lora_r 0 -> 4"]),
        (["--partitions", parts, "--learning_rate", "5e-6"], ["learning_rate 0.001 -> 5e-06", "new --out"]),
    ]
    for flags, needles in cases:
        code, text = sdpo("train", *flags, "--out", out, "--resume")
        print("\n" + one_line_error(code, text, 2, "other settings", *needles))
    # The same value given again is not a change.
    ok("train", "--partitions", parts, "--out", out, "--resume", "--max_length", "64", "--model", tiny_model_dir)
    assert json.loads((out / "run.json").read_text())["settings"] == json.loads(before)["settings"]


def test_resume_refuses_partitions_changed_in_place(tmp_path, tiny_model_dir):
    parts = write_partitions(tmp_path / "parts", steps=1, pairs=4)
    out = tmp_path / "run"
    ok("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *FAST)
    write_partitions(tmp_path / "parts", steps=1, pairs=4, offset=4)  # same folder, other pairs
    code, text = sdpo("train", "--partitions", parts, "--out", out, "--resume")
    print("\n" + one_line_error(code, text, 2, "changed since the run started"))


# ---------------------------------------------------------------- end-of-step figures


def _naive_logps(model, tokenizer, prompt, completion, max_length: int) -> float:
    """Sum of log p(completion token) by a plain forward: chat template, keep_start truncation."""
    import torch

    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    assert list(full[:len(prompt_ids)]) == list(prompt_ids) and len(prompt_ids) < max_length
    ids = list(full)[:max_length]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(prompt_ids), len(ids)))


@pytest.mark.slow
def test_end_of_step_figures_are_over_the_whole_partition(tmp_path, tiny_model_dir):
    from sdpo_kit.models import load_model

    parts = write_partitions(tmp_path / "parts", steps=3, pairs=4)
    out = tmp_path / "run"
    ok("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *QUIET)  # logging_steps 10
    previous = tiny_model_dir
    for t in (1, 2, 3):
        summary = json.loads((out / f"step_{t}" / "summary.json").read_text())
        assert summary["optimizer_steps"] == 2 and summary["end_over"] == "partition"
        policy, tok = load_model(out / f"step_{t}" / "model")
        ref, _ = load_model(previous)
        margins = []
        for r in pl.read_parquet(parts / f"step_{t}.parquet").iter_rows(named=True):
            pw, pl_ = (_naive_logps(policy, tok, r["prompt"], r[k], 64) for k in ("chosen", "rejected"))
            rw, rl = (_naive_logps(ref, tok, r["prompt"], r[k], 64) for k in ("chosen", "rejected"))
            margins.append(0.1 * ((pw - rw) - (pl_ - rl)))
        loss = sum(math.log1p(math.exp(-m)) for m in margins) / len(margins)  # −log σ(m)
        assert summary["loss_first"] == pytest.approx(math.log(2), abs=1e-4)
        assert summary["sigmoid_loss_end"] != pytest.approx(summary["loss_first"], abs=1e-4)
        assert summary["sigmoid_loss_end"] == pytest.approx(loss, abs=1e-5)
        assert summary["reward_margin_end"] == pytest.approx(sum(margins) / len(margins), abs=1e-5)
        assert summary["reward_accuracy_end"] == sum(m > 0 for m in margins) / len(margins)
        print(f"\nstep {t}: loss_first {summary['loss_first']:.6f}  sigmoid_loss_end {summary['sigmoid_loss_end']:.6f} "
              f"(naive {loss:.6f})  reward_margin_end {summary['reward_margin_end']:+.6f}  "
              f"TRL train_loss {summary['train_loss']:.6f}")
        previous = out / f"step_{t}" / "model"
    # The report plots these values.
    ok("report", out, "--out", tmp_path / "report")
    figures = json.loads((tmp_path / "report" / "figures.json").read_text())
    bars = figures["run_reward_margin"]["axes"][1]["bars"][0]["values"]
    ends = [json.loads((out / f"step_{t}" / "summary.json").read_text())["reward_margin_end"] for t in (1, 2, 3)]
    assert bars == pytest.approx(ends)


# ---------------------------------------------------------------- eval scores the recorded models


def _gammas(eval_dir: Path, name: str = "S") -> list[float]:
    return pl.read_parquet(eval_dir / "scores.parquet").sort("pair_id")[f"gamma_{name}"].to_list()


@pytest.mark.slow
def test_eval_from_another_folder_scores_the_same_S(tmp_path, tiny_model_dir, smollm_tokenizer, monkeypatch):
    """Trained with a relative `--model tiny`; eval from another folder (which has its own `tiny`)."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, home / "tiny")
    build_tiny_model(elsewhere / "tiny", smollm_tokenizer, seed=7)  # a different model under the same name
    parts = write_partitions(home / "parts", steps=1, pairs=4)
    heldout = write_partitions(tmp_path / "heldout", steps=1, pairs=6, offset=20) / "step_1.parquet"
    monkeypatch.chdir(home)
    ok("train", "--partitions", "parts", "--model", "tiny", "--out", "run", *FAST)
    assert run_json(home / "run")["base_model"] == str((home / "tiny").resolve())
    ok("eval", "--run", "run", "--data", heldout, "--out", "eval_home")
    monkeypatch.chdir(elsewhere)
    ok("eval", "--run", home / "run", "--data", heldout, "--out", "eval_elsewhere")
    here, there = _gammas(home / "eval_home"), _gammas(elsewhere / "eval_elsewhere")
    assert here == there and len(here) == 6
    assert _gammas(home / "eval_home", "M1") == _gammas(elsewhere / "eval_elsewhere", "M1")
    ev = json.loads((elsewhere / "eval_elsewhere" / "eval.json").read_text())
    assert ev["models"][0]["fingerprint"] == run_json(home / "run")["base_fingerprint"]
    print(f"\ncross-folder eval: mean γ_S from {home}: {sum(here) / 6:+.6f}; from {elsewhere}: {sum(there) / 6:+.6f}")

    # A run.json of older sdpo_kit (base model as typed, relative) resolves to elsewhere/tiny: refused.
    record = run_json(home / "run")
    (home / "run" / "run.json").write_text(json.dumps({**record, "base_model": "tiny"}))
    code, text = sdpo("eval", "--run", home / "run", "--data", heldout, "--out", "eval_old")
    print(one_line_error(code, text, 1, "tiny", "fingerprint", record["base_fingerprint"], "not the model this run used"))
    (home / "run" / "run.json").write_text(json.dumps(record))

    # M1's weights replaced after training: refused, naming M1.
    shutil.copy(home / "tiny" / "model.safetensors", home / "run" / "step_1" / "model" / "model.safetensors")
    code, text = sdpo("eval", "--run", home / "run", "--data", heldout, "--out", "eval_m1")
    print(one_line_error(code, text, 1, "step_1", "M1", record["steps"][0]["model_fingerprint"]))


def test_report_refuses_an_eval_of_other_weights(tmp_path):
    from test_report import write_contract_run

    run = write_contract_run(tmp_path, "run")
    ev = json.loads((run / "eval" / "eval.json").read_text())
    for m, fp in zip(ev["models"], ["fp0", "fp1", "fp2"]):
        m["fingerprint"] = fp
    (run / "eval" / "eval.json").write_text(json.dumps(ev))
    ok("report", run, "--out", tmp_path / "rep")  # fingerprints as run.json records them
    ev["models"][2]["fingerprint"] = "0123456789abcdef"
    (run / "eval" / "eval.json").write_text(json.dumps(ev))
    code, text = sdpo("report", run, "--out", tmp_path / "rep")
    print("\n" + one_line_error(code, text, 1, "eval.json", "M2 0123456789abcdef (run.json: fp2)", "rerun `sdpo eval`"))


# ---------------------------------------------------------------- one-line answers to bad input


@pytest.fixture()
def parts1(tmp_path) -> Path:
    return write_partitions(tmp_path / "parts", steps=2, pairs=4)


def _train_error(tmp_path, tiny_model_dir, *flags, code: int, needles=(), parts=None) -> str:
    out = tmp_path / "run"
    argv = ["train", *(["--partitions", parts] if parts else []), "--model", tiny_model_dir, "--out", out,
            *FAST, *flags]
    got, text = sdpo(*argv)
    line = one_line_error(got, text, code, *needles)
    assert not (out / "run.json").exists()  # refused before anything was written
    print(f"\n$ sdpo {' '.join(str(a) for a in argv[:3])} ... {' '.join(str(f) for f in flags)}\n{line}")
    return line


def test_train_partitions_file_missing_step_and_no_manifest(tmp_path, tiny_model_dir, parts1):
    scored = tmp_path / "scored.parquet"
    shutil.copy(parts1 / "step_1.parquet", scored)
    _train_error(tmp_path, tiny_model_dir, parts=scored, code=1, needles=["is a file, not a folder"])
    (parts1 / "step_2.parquet").rename(parts1 / "step_3.parquet")
    _train_error(tmp_path, tiny_model_dir, parts=parts1, code=1, needles=["missing file", "step_2.parquet"])
    (parts1 / "manifest.json").unlink()  # without a manifest: step_1, step_3 is a gap, not steps 1 and 2
    _train_error(tmp_path, tiny_model_dir, parts=parts1, code=1, needles=["missing step(s) [2]"])
    (parts1 / "manifest.json").write_text("{not json")
    _train_error(tmp_path, tiny_model_dir, parts=parts1, code=1, needles=["manifest.json", "not a partitions manifest"])
    _train_error(tmp_path, tiny_model_dir, parts=tmp_path / "nope", code=1, needles=["does not exist"])


def test_train_bad_flags_and_yaml(tmp_path, tiny_model_dir, parts1):
    _train_error(tmp_path, tiny_model_dir, "--max_length", "1", parts=parts1, code=2, needles=["--max_length", ">= 2"])
    _train_error(tmp_path, tiny_model_dir, "--learnig_rate", "1e-3", parts=parts1, code=2,
                 needles=["--learnig_rate", "did you mean --learning_rate"])
    _train_error(tmp_path, tiny_model_dir, "--learning_rat", "5e-6", parts=parts1, code=2,  # not a prefix match
                 needles=["unknown flag --learning_rat"])
    _train_error(tmp_path, tiny_model_dir, "--beta", "abc", parts=parts1, code=2, needles=["--beta", "abc"])
    head = f"partitions: {parts1}\n"
    for text, needles in [(head + "beta: [1, 2]\n", ["beta: expected float, got [1, 2]"]),
                          (head + "beta: 0.1\n  max_length: [\n", ["line", "not valid YAML"]),
                          ("- beta\n", ["YAML mapping"]), (head + "betta: 0.2\n", ["betta (did you mean beta?)"])]:
        config = tmp_path / "run.yaml"
        config.write_text(text)
        _train_error(tmp_path, tiny_model_dir, "--config", config, code=2, needles=[str(config), *needles])


def test_train_model_folder_broken_or_without_weights(tmp_path, tiny_model_dir, parts1):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    _train_error(tmp_path, tiny_model_dir, "--model", broken, parts=parts1, code=1, needles=[str(broken)])
    empty = tmp_path / "no_weights"
    shutil.copytree(tiny_model_dir, empty)
    (empty / "model.safetensors").unlink()
    _train_error(tmp_path, tiny_model_dir, "--model", empty, parts=parts1, code=1, needles=[str(empty)])


def test_empty_run_json_and_unwritable_outputs(tmp_path, tiny_model_dir, parts1):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")
    heldout = parts1 / "step_1.parquet"
    for argv, code in [(["train", "--partitions", parts1, "--out", run, "--resume"], 1),
                       (["eval", "--run", run, "--data", heldout], 1), (["report", run, "--out", tmp_path / "rep"], 1)]:
        got, text = sdpo(*argv)
        print(f"\n$ sdpo {argv[0]} (run.json is {{}})\n" + one_line_error(got, text, code, "run.json", "not a run record"))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    got, text = sdpo("train", "--partitions", parts1, "--model", tiny_model_dir, "--out", blocker / "run", *FAST)
    print("\n" + one_line_error(got, text, 1, "--out", "cannot write there"))
    got, text = sdpo("train", "--partitions", parts1, "--model", tiny_model_dir, "--out", blocker, *FAST)
    print("\n" + one_line_error(got, text, 1, "is a file, not a folder"))
    if Path("/sys").is_dir() and _readonly("/sys"):
        got, text = sdpo("train", "--partitions", parts1, "--model", tiny_model_dir, "--out", "/sys/sdpo_run", *FAST)
        print("\n" + one_line_error(got, text, 1, "/sys/sdpo_run", "cannot write there"))


def _readonly(folder: str) -> bool:
    try:
        os.mkdir(Path(folder) / "sdpo_probe")
    except OSError:
        return True
    os.rmdir(Path(folder) / "sdpo_probe")
    return False


def test_report_out_is_a_file_or_a_foreign_folder(tmp_path):
    from test_report import write_contract_run

    run = write_contract_run(tmp_path, "run")
    target = tmp_path / "report.html"
    target.write_text("mine")
    got, text = sdpo("report", run, "--out", target)
    print("\n" + one_line_error(got, text, 1, "--out", "is a file, not a folder"))
    assert target.read_text() == "mine"
    got, text = sdpo("report", run, "--out", tmp_path)  # holds the run itself: never replaced
    print("\n" + one_line_error(got, text, 2, "would overwrite the input"))
    assert (run / "run.json").is_file()


# ---------------------------------------------------------------- the report: escaped, atomic


def test_report_escapes_run_names_and_data(tmp_path):
    from test_report import write_contract_run

    evil = "x' onerror='alert(1)"
    run = write_contract_run(tmp_path, evil)
    src = "$\\alpha$ | <script>alert(2)</script>\nnext"
    for f in (tmp_path / f"{evil}_parts").glob("step_*.parquet"):  # a source name with mathtext, |, markup
        pl.read_parquet(f).with_columns(source=pl.lit(src)).write_parquet(f)
    scores = pl.read_parquet(run / "eval" / "scores.parquet")
    scores.rename({"judge_confidence": "$x$"}).write_parquet(run / "eval" / "scores.parquet")
    ok("report", run, "--out", tmp_path / "rep", "--signal", "$x$")
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "onerror='alert(1)" not in page and "<script>" not in page
    assert "alt='x&#x27; onerror=&#x27;alert(1)_reward_margin'" in page
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "<script>" not in md and f"## x&#x27; onerror=&#x27;alert(1)" in md
    assert "onerror='alert(1)" not in md  # the verdict's models table too (it escaped only `|` before)
    figures = json.loads((tmp_path / "rep" / "figures.json").read_text())
    mix = figures[f"{evil}_partitions"]["axes"][1]["bars"]
    # literal text, no mathtext; the newline shown as `\n`, as on the terminal (issue 22)
    assert [b["label"] for b in mix] == ["\\$\\alpha\\$ | <script>alert(2)</script>\\nnext"]
    assert figures[f"{evil}_difficulty"]["axes"][0]["xlabel"].startswith("\\$x\\$")


def test_report_is_written_atomically_as_a_folder(tmp_path, monkeypatch):
    from sdpo_kit.report import html as report
    from test_report import write_contract_run

    run = write_contract_run(tmp_path, "run")
    out = tmp_path / "rep"
    ok("report", run, "--out", out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert "run_reference_margins.png" in first
    shutil.rmtree(run / "eval")  # fewer figures now: the held-out ones must not linger
    ok("report", run, "--out", out)
    assert not (out / "run_reference_margins.png").exists()
    assert {p.name for p in out.iterdir()} < set(first)

    def killed(*_a, **_k):
        raise KeyboardInterrupt  # the process dies while writing figures
    (out / "report.html").write_bytes(first["report.html"])  # the old page, to see it survive
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(report, "summary_markdown", killed)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(report.ReportConfig([run], str(out)))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old report, untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left
