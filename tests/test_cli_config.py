"""One parser for every command (`sdpo_kit.parser`): help, `--config` YAML, flags over YAML, did-you-mean,
a `trl dpo` YAML read as is, train's max_length/truncation_mode from the partitions' scorer.

    pytest -q tests/test_cli_config.py
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdpo_kit import __version__, parser
from sdpo_kit.cli import COMMANDS, app
from sdpo_kit.errors import UsageError

REPO = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def configs_of(words):
    """The config classes of a command (train: StepwiseConfig and trl.DPOConfig)."""
    module, classes = parser.load(COMMANDS[words])
    if words == ("train",):
        from trl import DPOConfig

        classes = [*classes, DPOConfig]
    return classes


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_help_lists_every_field_and_h_is_help(words):
    result = invoke(*words, "--help")
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith(f"usage: sdpo {' '.join(words)}") and "--config YAML" in text and "-h, --help" in text
    for cls in configs_of(words):
        for f in dataclasses.fields(cls):
            if f.init:
                flag = f.name.upper() if f.metadata.get("positional") else f"--{f.name}"
                assert flag in text, (words, f.name)
    assert invoke(*words, "-h").output == text
    first = (configs_of(words)[0].__doc__ or "").strip().splitlines()[0]
    assert " ".join(first.split()[:6]) in " ".join(text.split())  # the help is the config's docstring
    assert invoke(*words[:-1], "--help").output == invoke(*words[:-1], "-h").output


def test_top_level_help_version_and_no_heavy_imports():
    top = invoke("--help")
    assert top.exit_code == 0 and all(w in top.output for w in ("train", "eval", "report", "data", "curate"))
    assert "Detected format" in invoke("data", "--help").output  # each command's line: its config's docstring
    version = invoke("--version")
    assert version.exit_code == 0 and version.output == f"sdpo_kit {__version__}\n"
    code = ("import sys; from sdpo_kit.cli import app, COMMANDS\n"
            "for words in COMMANDS:\n"
            "    if words not in (('train',), ('curate', 'crossfit')):  # their flags are TRL's\n"
            "        try: app([*words, '--help'], standalone_mode=False)\n"
            "        except SystemExit as e: assert not e.code\n"
            "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"  # `--help` of every command but train/crossfit: no torch/trl


def yaml_command(path: Path) -> list[str]:
    """Each configs/*.yaml starts with the command line that uses it: `# sdpo WORDS --config ... [flags]`."""
    line = path.read_text().splitlines()[0]
    assert line.startswith("# sdpo ") and f"--config configs/{path.name}" in line, (path, line)
    return shlex.split(line[len("# sdpo "):].split("#")[0].split("  (")[0])


def parse(words, argv):
    """The command's configs (and given keys) exactly as `sdpo WORDS argv` would parse them."""
    module, classes = parser.load(COMMANDS[tuple(words)])
    own = getattr(module, "parse", None)
    return own(argv) if own else parser.parse_flags(parser.Parser("sdpo " + " ".join(words), classes), argv)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_parses_through_its_command(path, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    line = yaml_command(path)
    words = line[: line.index("--config")]
    argv = [a.replace("PARTS", str(tmp_path)) for a in line[len(words):]]
    run = tmp_path / "run"
    if words == ["train"] and "--partitions" not in argv:
        argv += ["--partitions", str(tmp_path), "--out", str(run)]
    if words == ["eval"]:  # the demo writes these; here a stand-in run folder and REPO data
        run.mkdir()
        (run / "run.json").write_text("{}")
        argv += ["--run", str(run), "--data", "data/dpo_en_demo.json"]
    configs, given = parse(words, argv)
    values = {f.name: getattr(c, f.name) for c in configs for f in dataclasses.fields(c) if f.init}
    import yaml

    from sdpo_kit.training.config import from_trl

    raw = yaml.safe_load(path.read_text())
    keys = from_trl(raw, path) if words == ["train"] else raw  # a `trl dpo` file in our keys
    assert set(keys) <= given
    for key, value in keys.items():
        if f"--{key}" in argv:
            continue  # a flag on the YAML's own command line (or a stand-in above) wins
        got = list(values[key]) if isinstance(values[key], tuple) else values[key]
        assert got == value or got == [] and value == "none", (path.name, key, got, value)  # report_to: none


def test_flags_override_yaml_and_bool_words(monkeypatch):
    monkeypatch.chdir(REPO)
    (files, split), given = parse(["curate", "split"], ["--config", "configs/curate_split.yaml", "--steps", "2",
                                                         "--fractions", "0.5,0.5", "--overwrite", "false"])
    assert split.steps == 2 and split.fractions == (0.5, 0.5) and files.overwrite is False  # YAML: 3, 0.4..., true
    assert split.by == "margin" and files.scored == "demo_out/scored_dpo_en_demo.parquet"  # from the YAML
    assert {"steps", "fractions", "overwrite", "by", "scored"} <= given
    (files, scorer), _ = parse(["curate", "score"], ["--config", "configs/curate_score.yaml", "--max-length", "96",
                                                      "--no-cache", "pairs.jsonl"])
    assert (scorer.max_length, files.cache, files.data, files.limit) == (96, False, "pairs.jsonl", 64)
    # The command batches 4096 tokens per forward (the library's ScoreConfig: 512); batching only.
    assert scorer.token_budget == 4096 and {f.name: f.default for f in dataclasses.fields(scorer)}["token_budget"] == 512
    (report,), _ = parse(["report"], ["--config", "configs/report.yaml", "r1", "r2", "--out", "x"])
    assert report.runs == ["r1", "r2"] and report.out == "x"


@pytest.mark.parametrize("words, yaml_text, needle", [
    (["curate", "split"], "stpes: 2\n", "unknown key stpes (did you mean steps?)"),
    (["curate", "score"], "data: x\nout: y\nmax_lenght: 64\n", "unknown key max_lenght (did you mean max_length?)"),
    (["data", "split"], "data: x\nout: y\nheldout: [0.2]\n", "heldout: expected float, got [0.2]"),
    (["train"], "partitions: p\nout: o\nlearnig_rate: 1.0e-5\n", "did you mean learning_rate?"),
    (["train"], "partitions: p\nout: o\nbeta: [1, 2]\n", "beta: expected float, got [1, 2]"),
    (["report"], "- a\n- b\n", "must hold a YAML mapping"),
])
def test_bad_yaml_is_one_line_in_user_words(tmp_path, words, yaml_text, needle):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    result = invoke(*words, "--config", path)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert needle in lines[0] and "fail_with_unknown_args" not in lines[0], lines[0]


def test_unknown_flag_did_you_mean_in_the_users_spelling():
    result = invoke("curate", "split", "x.parquet", "--out", "o", "--drop-truncatd")
    assert result.exit_code == 2 and "did you mean --drop-truncated?" in result.stderr
    result = invoke("data", "inspect", "x.json", "--keep_duplicate")
    assert result.exit_code == 2 and "did you mean --keep_duplicates?" in result.stderr


def test_trl_dpo_yaml_is_read_as_is(tmp_path, capsys):
    from sdpo_kit.training.config import parse_train_args

    cfg, args, overrides = parse_train_args(["--config", str(REPO / "configs" / "trl_dpo.yaml"),
                                             "--partitions", str(tmp_path)])
    assert cfg.model == "HuggingFaceTB/SmolLM2-135M-Instruct" and cfg.out == "SmolLM2-135M-DPO"
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_target_modules) == (32, 16, "q_proj,k_proj,v_proj,o_proj")
    assert args.learning_rate == 5e-6 and args.max_length == 1024 and args.gradient_accumulation_steps == 8
    assert overrides["learning_rate"] == 5e-6 and args.gradient_checkpointing is True  # YAML beats CPU defaults
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[sdpo train]")]
    assert len(notes) == 3, notes
    assert "model_name_or_path -> model" in notes[0] and "use_peft -> lora_r 32" in notes[0]
    assert "dataset_name, dataset_train_split, dataset_test_split" in notes[1] and "--partitions" in notes[1]
    assert "dtype" in notes[2]
    # use_peft without lora_* takes trl.ModelConfig's defaults; use_peft false is full fine-tuning.
    from trl import ModelConfig

    peft = tmp_path / "peft.yaml"
    peft.write_text("model_name_or_path: default\nuse_peft: true\n")
    cfg, _, _ = parse_train_args(["--config", str(peft), "--partitions", str(tmp_path), "--out", str(tmp_path / "r")])
    trl_defaults = ModelConfig()
    assert (cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout) == (trl_defaults.lora_r, trl_defaults.lora_alpha,
                                                              trl_defaults.lora_dropout)
    peft.write_text("use_peft: false\nlora_r: 8\n")
    assert parse_train_args(["--config", str(peft), "--partitions", str(tmp_path), "--out", "r"])[0].lora_r == 0
    peft.write_text("use_peft: true\nuse_dora: true\n")
    result = invoke("train", "--config", peft, "--partitions", tmp_path, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "use_dora: not supported by sdpo train" in result.stderr


def test_train_reads_max_length_from_the_partitions_and_resumes(tmp_path, tiny_model_dir, monkeypatch):
    """Scored with --max-length 64 and split: train without --max_length uses 64 (one line says so), step 1
    reuses the curation scores, and a --resume with no settings restores the run's own."""
    import polars as pl

    import sdpo_kit.scoring.cache
    from sdpo_kit.models import load_model, model_fingerprint
    from sdpo_kit.training.config import parse_train_args
    from test_train import FAST, write_partitions

    monkeypatch.setenv("SDPO_KIT_CACHE", str(tmp_path / "cache"))
    pairs = write_partitions(tmp_path / "pairs", steps=1, pairs=8) / "step_1.parquet"
    scored, parts = tmp_path / "scored.parquet", tmp_path / "parts"
    assert invoke("curate", "score", pairs, "--model", tiny_model_dir, "--out", scored, "--max-length", "64",
                  "--truncation-mode", "keep_end").exit_code == 0
    assert invoke("curate", "split", scored, "--steps", "2", "--out", parts).exit_code == 0
    assert json.loads((parts / "manifest.json").read_text())["scorer"]["max_length"] == 64
    assert FAST[:2] == ["--max_length", "64"]
    fast = FAST[2:]
    _, args, overrides = parse_train_args(["--partitions", str(parts), "--out", str(tmp_path / "x"), *fast])
    assert (args.max_length, args.truncation_mode) == (64, "keep_end") and overrides["max_length"] == 64
    _, args, _ = parse_train_args(["--partitions", str(parts), "--out", "x", "--max_length", "32", *fast])
    assert (args.max_length, args.truncation_mode) == (32, "keep_end")  # a flag wins, key by key
    s_fp, real, scored_with = model_fingerprint(load_model(tiny_model_dir)[0]), sdpo_kit.scoring.cache.score_frame, []
    monkeypatch.setattr(sdpo_kit.scoring.cache, "score_frame",
                        lambda pairs, model, *a, **k: scored_with.append(model_fingerprint(model)) or real(pairs, model, *a, **k))
    out = tmp_path / "run"
    result = invoke("train", "--partitions", parts, "--model", tiny_model_dir, "--out", out, *fast)
    assert result.exit_code == 0, result.output
    said = [line for line in result.output.splitlines() if "as the partitions were scored" in line]
    assert len(said) == 1 and "max_length 64 and truncation_mode keep_end" in said[0]
    assert s_fp not in scored_with  # step 1 reused the curation scores: the settings match
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["trl"]["max_length"] == 64 and run["settings"]["trl"]["truncation_mode"] == "keep_end"
    ref = pl.read_parquet(out / "step_1" / "reference.parquet").sort("pair_id")
    curated = pl.read_parquet(parts / "step_1.parquet").sort("pair_id")
    assert ref["ref_chosen_logps"].to_list() == curated["ref_chosen_logps"].to_list()
    again = invoke("train", "--partitions", parts, "--out", out, "--resume")
    assert again.exit_code == 0 and "already done" in again.output, again.output
    assert json.loads((out / "run.json").read_text())["settings"] == run["settings"]
    changed = invoke("train", "--partitions", parts, "--out", out, "--resume", "--max_length", "32")
    assert changed.exit_code == 2 and "max_length 64 -> 32" in changed.stderr


def test_max_length_zero_means_no_truncation_everywhere(tmp_path):
    """One meaning of 0 (and none): no truncation, in the scorer, `sdpo train`, `sdpo eval` and the data card;
    eval's own default is the run's value from run.json settings (not config.yaml), and one check refuses 1."""
    from sdpo_kit.curate.card import CardConfig
    from sdpo_kit.report.evaluate import EvalConfig
    from sdpo_kit.scoring.frame import ScoreConfig
    from sdpo_kit.training.config import parse_train_args, scorer_config

    assert ScoreConfig(max_length=0).max_length is None and ScoreConfig(max_length=None).max_length is None
    assert CardConfig("d", "o", max_length=0).scorer().max_length is None
    assert CardConfig("d", "o").scorer().max_length == ScoreConfig().max_length
    _, args, _ = parse_train_args(["--partitions", str(tmp_path), "--out", str(tmp_path / "o"), "--max_length", "0"])
    assert args.max_length is None and scorer_config(args).max_length is None
    run = {"settings": {"trl": {"max_length": 64, "truncation_mode": "keep_end"}}}
    (tmp_path / "config.yaml").write_text("max_length: 999\n")  # diff-only config.yaml: not what eval reads
    assert EvalConfig(str(tmp_path), "d").scorer(run).settings() == {
        "max_length": 64, "truncation_mode": "keep_end", "dtype": "float32"}
    assert EvalConfig(str(tmp_path), "d", max_length=0).scorer(run).max_length is None
    assert EvalConfig(str(tmp_path), "d", max_length=32).scorer(run).max_length == 32
    assert EvalConfig(str(tmp_path), "d").scorer({}).max_length == 999  # a run without settings: config.yaml
    for build in (lambda: ScoreConfig(max_length=1), lambda: CardConfig("d", "o", max_length=1),
                  lambda: EvalConfig("r", "d", max_length=1),
                  lambda: parse_train_args(["--partitions", str(tmp_path), "--out", "o", "--max_length", "1"])):
        with pytest.raises(UsageError, match="max_length: must be >= 2 tokens"):
            build()


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_configs_are_values_no_file_is_read_to_build_one(words, tmp_path):
    """Every command's config builds from paths that do not exist: files are read by `run`, never by
    `__post_init__` (a notebook can build a config before its inputs exist, and `--help` stays cheap)."""
    missing = str(tmp_path / "nope")
    for cls in parser.load(COMMANDS[words])[1]:
        required = {f.name: ([missing] if "list" in str(f.type) else missing) for f in dataclasses.fields(cls)
                    if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        paths = {f.name: missing for f in dataclasses.fields(cls) if f.name in ("run", "data", "partitions", "out")}
        paths |= {"runs": [missing]} if "runs" in {f.name for f in dataclasses.fields(cls)} else {}
        cls(**{**paths, **required})


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_every_command_is_run_of_its_configs(words):
    """The Python API: `run(*configs)` with the registry's config classes; anything more (train's and
    crossfit's DPOConfig, the command line's `given`) has a default."""
    import inspect

    module, classes = parser.load(COMMANDS[words])
    params = list(inspect.signature(module.run).parameters.values())
    assert len(params) >= len(classes)
    assert all(p.default is not inspect.Parameter.empty for p in params[len(classes):]), (words, params)
    assert all(p.default is inspect.Parameter.empty for p in params[:len(classes)]), (words, params)
