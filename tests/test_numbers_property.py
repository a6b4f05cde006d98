"""Property test (issue 22 item 7): every numeric flag of every command, set to a random value from a
fixed list of hostile numbers, either runs or ends in ONE `error:` line with exit 1 or 2, never a traceback.

    python -m pytest -q tests/test_numbers_property.py

The numeric fields are read from each command's config dataclasses (train: StepwiseConfig and
trl.DPOConfig), so a new flag is covered without touching this file. hypothesis is not installed:
a seeded `random.Random` draws the values. Each command gets inputs that do not exist, so a
setting that passes the checks still stops at the input check, before any model loads; the
train case at the end runs the tiny model for real on a sample of the draws.
"""

from __future__ import annotations

import dataclasses
import random
import typing
from pathlib import Path

import pytest

from sdpo_kit import parser as config
from sdpo_kit.cli import COMMANDS
from test_hardening_run import sdpo

HOSTILE = ["nan", "inf", "-inf", "-1", "0", "1", "0.5", "1e30", "-1e30", str(2**40), str(2**32), str(-2**63),
           "1e-30", "-0.0", "1e308", "3"]
SEED = 22


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model_dir) -> dict:
    """Real small inputs: pairs for the data commands, a scored file (tiny model) for curate split."""
    from test_train import write_partitions

    tmp = tmp_path_factory.mktemp("inputs")
    parts = write_partitions(tmp / "parts", steps=1, pairs=12)
    scored = tmp / "scored.parquet"
    code, text, _ = _invoke(["curate", "score", parts / "step_1.parquet", "--model", tiny_model_dir, "--out", scored,
                             "--max_length", "64"])
    assert code == 0, text
    return {"pairs": parts / "step_1.parquet", "scored": scored, "missing": tmp / "missing"}


def base_argv(words: tuple[str, ...], inputs: dict, out: Path) -> list[str]:
    """Arguments for each command. The commands without a model run for real on small inputs; those
    that load one (curate score: a missing --model; train, eval: a missing input) stop right after
    their settings are checked, before any model loads."""
    missing = str(inputs["missing"])
    return {
        ("data", "inspect"): [inputs["pairs"]],
        ("data", "split"): [inputs["pairs"], "--out", out],
        ("data", "card"): [inputs["pairs"], "--out", out],
        ("curate", "score"): [inputs["pairs"], "--out", out / "scored.parquet", "--model", missing],
        ("curate", "split"): [inputs["scored"], "--out", out],
        ("curate", "crossfit"): [missing, "--out", out / "difficulty.parquet"],
        ("train",): ["--partitions", missing, "--out", out],
        ("eval",): ["--run", missing, "--data", inputs["pairs"]],
        ("report",): [missing, "--out", out],
    }[words]


def numeric_fields(words) -> list[tuple[str, type]]:
    """(field, int or float) of every non-bool numeric field (Optional and list-of included)."""
    module, classes = config.load(COMMANDS[words])
    if words in (("train",), ("curate", "crossfit")):
        from trl import DPOConfig

        classes = [*classes, DPOConfig]
    out = []
    for cls in classes:
        types_ = config.hints([cls])
        for f in dataclasses.fields(cls):
            base = config._unwrap(types_.get(f.name, str))[0]
            if config._is_list(base):
                base = next((a for a in typing.get_args(base) if a is not Ellipsis), str)
            if f.init and not f.metadata.get("positional") and base in (int, float):
                out.append((f.name, base))
    return out


def answered(code: int, text: str, exception) -> bool:
    """Ran (exit 0), or one `error:` line with exit 1/2 and no traceback."""
    if exception is not None and not isinstance(exception, SystemExit):
        return False
    errors = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    return code == 0 or (code in (1, 2) and len(errors) == 1 and "Traceback" not in text)


def _invoke(argv):
    from typer.testing import CliRunner

    from sdpo_kit.cli import app

    result = CliRunner().invoke(app, [str(a) for a in argv])
    return result.exit_code, result.output, result.exception


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_every_numeric_flag_with_hostile_values_is_one_line(words, tmp_path, inputs):
    fields = numeric_fields(words)
    if not fields:
        pytest.skip(f"sdpo {' '.join(words)} has no numeric flag")
    rng = random.Random(f"{SEED}-{' '.join(words)}")
    draws = [(name, value) for name, _ in fields for value in rng.sample(HOSTILE, 2)]
    draws += [(rng.choice(fields)[0], value) for value in HOSTILE]  # every value at least once per command
    bad = []
    for i, (name, value) in enumerate(draws):
        code, text, exc = _invoke([*words, *base_argv(words, inputs, tmp_path / f"out{i}"), f"--{name}={value}"])
        if not answered(code, text, exc):
            bad.append(f"--{name}={value}: exit {code}: {(text or repr(exc))[-300:]}")
    assert not bad, "\n".join(bad)


def yaml_value(raw: str, tp):
    """The YAML value of `raw` for a field of type `tp`: .inf/.nan floats even for an int key."""
    number = float(raw)
    return int(raw) if tp is int and raw.lstrip("-").isdigit() else number


def test_several_hostile_flags_at_once_and_yaml_values(tmp_path, inputs):
    """Random combinations of three flags per command, and the same values as YAML keys."""
    import yaml

    rng = random.Random(SEED)
    bad = []
    for words in COMMANDS:
        fields = numeric_fields(words)
        for i in range(4 if fields else 0):
            picks = rng.sample(fields, min(3, len(fields)))
            flags = [f"--{name}={rng.choice(HOSTILE)}" for name, _ in picks]
            code, text, exc = _invoke([*words, *base_argv(words, inputs, tmp_path / f"{words[-1]}{i}"), *flags])
            if not answered(code, text, exc):
                bad.append(f"{' '.join(words)} {' '.join(flags)}: exit {code}: {(text or repr(exc))[-300:]}")
            name, tp = rng.choice(fields)
            raw = rng.choice(HOSTILE)
            path = tmp_path / "c.yaml"
            path.write_text(yaml.safe_dump({name: yaml_value(raw, tp)}))
            code, text, exc = _invoke([*words, *base_argv(words, inputs, tmp_path / f"{words[-1]}y{i}"), "--config",
                                       path])
            if not answered(code, text, exc):
                bad.append(f"{' '.join(words)} yaml {name}: {raw}: exit {code}: {(text or repr(exc))[-300:]}")
    assert not bad, "\n".join(bad)


# Fields whose hostile values only make a run long (or spawn processes), not wrong: drawn above, not here.
LONG = {"num_train_epochs", "max_steps", "dataloader_num_workers", "dataloader_prefetch_factor", "local_rank",
        "torch_empty_cache_steps", "ddp_timeout", "dataset_num_proc", "max_length", "per_device_train_batch_size",
        "gradient_accumulation_steps", "precompute_ref_batch_size"}


@pytest.mark.slow
def test_train_runs_or_refuses_random_hostile_settings_on_the_tiny_model(tmp_path, tiny_model_dir):
    """A sample of the draws on a real 1-optimiser-step run: done, or one `error:` line."""
    from test_train import FAST, write_partitions

    parts = write_partitions(tmp_path / "parts", steps=1, pairs=2)
    fields = [name for name, _ in numeric_fields(("train",)) if name not in LONG]
    rng = random.Random(SEED)
    bad = []
    for i in range(8):
        name, value = rng.choice(fields), rng.choice(HOSTILE)
        argv = ["train", "--partitions", parts, "--model", tiny_model_dir, "--out", tmp_path / f"run{i}", *FAST,
                "--max_steps", "1", f"--{name}={value}"]
        code, text, exc = _invoke(argv)
        print(f"--{name}={value}: exit {code} {text.strip().splitlines()[-1] if text.strip() else ''}")
        if not answered(code, text, exc):
            bad.append(f"--{name}={value}: exit {code}: {(text or repr(exc))[-300:]}")
    assert not bad, "\n".join(bad)
