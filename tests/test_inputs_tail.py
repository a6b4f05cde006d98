"""Issue 22, the long tail of inputs: each case answered in one line (or a counted reject), never a
library error, a hang or a silently wrong output.

    pytest -q tests/test_inputs_tail.py

Each test names the *Why* case of issue 22 it covers. Model-folder cases are in test_models.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from sdpo_kit.cli import app


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def one_line(result, code: int, words: str) -> str:
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.exit_code == code and len(lines) == 1 and lines[0].startswith("error: "), (result.exit_code,
                                                                                           result.output)
    assert words in lines[0], lines[0]
    return lines[0]


def pairs_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"prompt": f"Question {i}?", "chosen": f"A good answer {i}.", "rejected": f"Bad {i}.", "source": "oasst"}
        for i in range(6)]


# --- YAML: an alias bomb in --config -------------------------------------------------------------

BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9 if p else ['lol'] * 9)}]\n"
               for p, k in zip(["", "a", "b", "c", "d", "e"], "abcdef"))


def test_yaml_alias_bomb_is_refused_and_small_aliases_still_work(tmp_path):
    """Why: 'a 364-byte YAML alias bomb in a train config becomes a 7.8 MB run.json'."""
    from sdpo_kit.yaml_config import YAML_NODES, read_yaml

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB + "learning_rate: 1.0e-5\n")
    assert len(BOMB) < 400  # 9**6 = 531,441 strings once expanded
    out = tmp_path / "run"
    line = one_line(invoke("train", "--config", bomb, "--partitions", tmp_path, "--out", out), 2,
                    f"expand to more than {YAML_NODES:,} values")
    assert str(bomb) in line and not out.exists()
    for words in (["data", "inspect"], ["curate", "split"], ["report"]):  # every command's --config
        one_line(invoke(*words, "--config", bomb), 2, "alias bomb")
    (tmp_path / "loop.yaml").write_text("a: &x [1, *x]\n")
    one_line(invoke("data", "inspect", "--config", tmp_path / "loop.yaml"), 2, "refers to itself")
    (tmp_path / "ok.yaml").write_text("a: &x [1, 2]\nb: *x\nc: {k: *x}\n")
    assert read_yaml(tmp_path / "ok.yaml", "x") == {"a": [1, 2], "b": [1, 2], "c": {"k": [1, 2]}}


def test_an_alias_bomb_in_a_run_folders_config_yaml_is_refused(tmp_path):
    """config.yaml inside a run folder is read back (report, eval, train --resume): an edited one
    with an alias bomb is the same one line, not a multi-megabyte settings dict."""
    from test_report import write_contract_run

    run = write_contract_run(tmp_path, "run")
    (run / "config.yaml").write_text(BOMB + "seed: 1\n")
    one_line(invoke("report", run, "--out", tmp_path / "rep"), 2, "config.yaml: its YAML aliases")
    (run / "config.yaml").write_text("seed: &s 3\nother: *s\n")  # a small alias is fine
    assert invoke("report", run, "--out", tmp_path / "rep").exit_code == 0


# --- files that are not regular files ------------------------------------------------------------


def test_fifo_and_device_inputs_get_their_own_reason(tmp_path):
    """Why: 'a FIFO or /dev/zero input gets a wrong reason' (a FIFO read as a missing folder, or a hang)."""
    fifo = tmp_path / "pairs.jsonl"
    os.mkfifo(fifo)
    for args in (["data", "inspect", fifo], ["data", "split", fifo, "--out", tmp_path / "split"],
                 ["curate", "score", fifo, "--out", tmp_path / "s.parquet", "--model", tmp_path],
                 ["curate", "split", fifo, "--out", tmp_path / "parts"],
                 ["data", "card", fifo, "--out", tmp_path / "card"]):
        one_line(invoke(*args), 1, f"{fifo}: is a FIFO (named pipe), not a regular file")
    one_line(invoke("data", "inspect", "/dev/zero"), 1, "/dev/zero: is a character device, not a regular file")
    one_line(invoke("curate", "split", "/dev/zero", "--out", tmp_path / "parts"), 1, "is a character device")
    one_line(invoke("data", "inspect", "--config", fifo), 2, "is a FIFO")
    assert not any((tmp_path / n).exists() for n in ("split", "s.parquet", "parts", "card"))


# --- text that is not what it seems --------------------------------------------------------------


def test_a_lone_surrogate_loses_one_row_not_the_file(tmp_path):
    """Why: 'a lone surrogate "\\ud800" in JSONL loses the whole file'."""
    lines = [json.dumps(r) for r in ROWS]
    lines[2] = lines[2].replace("Question 2?", "Question 2\\ud800?")
    lines[4] = lines[4].replace("Bad 4.", "Bad \\ud83d\\ude00 4.")  # a valid pair (an emoji) is text
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "x.json").write_text("[" + ",".join(lines) + "]")
    for name in ("x.jsonl", "x.json"):
        out = tmp_path / name.replace(".", "_")
        result = invoke("data", "split", tmp_path / name, "--out", out, "--heldout", "0.5")
        assert result.exit_code == 0, result.output
        rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
        assert [(r["row"], r["reason"]) for r in rejects] == [(3, "non_utf8")]
        assert "lone surrogate \\ud800" in rejects[0]["detail"] and rejects[0]["raw"]["prompt"] == "Question 2\ufffd?"
        kept = pl.concat([pl.read_parquet(out / f) for f in ("train.parquet", "heldout.parquet")])
        assert kept.height == 5 and "Bad 😀 4." in kept["rejected"].list.first().struct.field("content").to_list()


def test_answers_differing_only_by_invisible_characters_are_identical(tmp_path):
    """Why: 'pairs ... differing only by U+200B are kept as real preferences'."""
    rows = [dict(r) for r in ROWS]
    rows[1]["rejected"] = rows[1]["chosen"].replace("good", "go\u200bod")
    rows[3]["rejected"] = "\u202e" + rows[3]["chosen"] + "\u2066\n"
    rows[5]["rejected"] = rows[5]["chosen"] + "\u200b!"  # a visible difference stays a pair
    data = pairs_jsonl(tmp_path / "x.jsonl", rows)
    report = json.loads(invoke("data", "inspect", data, "--json").stdout)
    assert report["valid"] == 4 and report["reasons"] == {"identical": 2}
    from sdpo_kit.data import load_pairs

    details = {r.row: r.detail for r in load_pairs(data).rejects}
    assert details == {2: "chosen and rejected answers differ only by invisible characters (U+200B)",
                       4: "chosen and rejected answers differ only by invisible characters (U+202E, U+2066)"}


def test_invisible_and_bidi_characters_are_shown_as_on_the_terminal():
    """Why: 'zero-width and right-to-left characters in source names are drawn raw in figures and
    cards (two sources both read "oasst")'."""
    from sdpo_kit.escape import html_table, md_cell, mpl_label, term, visible

    names = ["oasst", "oa\u200bsst", "\u202etsasoo", "oasst\u00ad"]
    for show in (md_cell, mpl_label, visible):
        shown = [show(n) for n in names]
        assert len(set(shown)) == 4 and all(s.isprintable() for s in shown), shown
    assert term("oa\u200bsst") == "oa\\u200bsst" and mpl_label("oa\u200bsst") == "oa\\u200bsst"
    assert md_cell("oa\u200bsst") == "oa\\\\u200bsst"  # markdown renders `\\` as one backslash: oa\u200bsst
    assert md_cell("a|b\nc") == "a\\|b c" and visible("café 東京") == "café 東京"
    assert "<td>\\u202etsasoo</td>" in html_table(["source"], [["\u202etsasoo"]])


def test_card_and_figures_show_invisible_source_names(tmp_path):
    """The same case end to end: a card and its source-mix figure of two sources that look alike."""
    from conftest import shared

    from sdpo_kit.data import load_pairs
    from sdpo_kit.io import write_parquet

    pairs = load_pairs(shared("dpo_en_demo.json")).pairs.head(30)
    pairs = pairs.with_columns(source=pl.Series(["oasst", "oa\u200bsst", "\u202eoasst"] * 10))
    scored = write_parquet(tmp_path / "scored.parquet", pairs.with_columns(
        margin=pl.Series([float(i % 7) - 3 for i in range(30)]), chosen_truncated=pl.lit(False),
        rejected_truncated=pl.lit(False)))
    result = invoke("curate", "split", scored, "--out", tmp_path / "parts", "--strategy", "by-source")
    assert result.exit_code == 0, result.output
    card = (tmp_path / "parts" / "README.md").read_text()
    assert "\u200b" not in card and "\u202e" not in card
    assert "oa\\\\u200bsst" in card and "\\\\u202eoasst" in card
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sdpo_kit import plots

    ax = plots.plot_partition_sources([{"step": 1, "sources": {"oasst": 3, "oa\u200bsst": 2, "\u202eoasst": 1}}],
                                      plt.figure().gca(), group="step")
    labels = [b["label"] for b in plots.axes_series(ax)["bars"]]
    plt.close("all")
    assert sorted(labels) == sorted(["oasst", "oa\\u200bsst", "\\u202eoasst"]), labels


# --- the report ----------------------------------------------------------------------------------


def _dpo(run: Path) -> Path:
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(meta | {"mode": "dpo"}))
    return run


def test_run_names_are_escaped_in_every_line_of_the_summary(tmp_path):
    """Why: 'a run name with a newline or markup goes raw into summary.md's verdict line'."""
    from test_report import write_contract_run

    a = write_contract_run(tmp_path, "sdpo\n# injected <img src=x onerror=alert(1)>", seed=1)
    b = _dpo(write_contract_run(tmp_path, "dpo\u202eevil|x", seed=2))
    result = invoke("report", a, b, "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "\n# injected" not in md and "<img" not in md and "\u202e" not in md
    verdict = [x for x in md.splitlines() if " vs " in x and x.startswith("**")]
    assert verdict and all("sdpo # injected &lt;img" in x and "dpo\\\\u202eevil\\|x" in x for x in verdict), verdict
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "<img src=x" not in page and "\u202e" not in page and "dpo\\u202eevil|x" in page
    assert "\n" not in result.stdout.strip().split("report: ")[1].split("\nsummary: ")[0]


def test_report_signal_must_be_a_numeric_column(tmp_path):
    """Why: '`sdpo report --signal source` (a non-numeric signal)' gave a traceback."""
    from test_report import write_contract_run

    run = write_contract_run(tmp_path, "run")
    line = one_line(invoke("report", run, "--out", tmp_path / "rep", "--signal", "source"), 2,
                    "--signal source: ")
    assert "holds it as String, not numbers" in line and not (tmp_path / "rep").exists()
    assert invoke("report", run, "--out", tmp_path / "rep", "--signal", "judge_confidence").exit_code == 0


# --- the scorer: truncation and the model's context ----------------------------------------------


def _short_context_model(tiny_model_dir, dest: Path, context: int) -> Path:
    """The tiny model claiming a shorter context (rotary positions: the weights do not change)."""
    import shutil

    shutil.copytree(tiny_model_dir, dest)
    cfg = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps(cfg | {"max_position_embeddings": context}))
    return dest


def test_pairs_identical_after_truncation_and_past_the_context_are_rejects(tiny_model_dir, tmp_path):
    """Why: 'pairs identical after truncation ... are kept as real preferences'; '`--max_length 0`
    scores a 200k-token prompt on a 2k-context model silently'; 'a warning when --max_length exceeds
    the model's context'."""
    shared = " ".join(["word"] * 60)
    rows = [{"prompt": "Say it?", "chosen": f"{shared} good", "rejected": f"{shared} bad"},  # cut to the same tokens
            {"prompt": "Short?", "chosen": "Yes.", "rejected": "No."},
            {"prompt": "Long? " + " ".join(["more"] * 120), "chosen": "A.", "rejected": "B."}]
    data = pairs_jsonl(tmp_path / "x.jsonl", rows)
    out = tmp_path / "scored.parquet"
    result = invoke("curate", "score", data, "--model", tiny_model_dir, "--out", out, "--max_length", "40",
                    "--no-cache")
    assert result.exit_code == 0, result.output
    rejects = {json.loads(x)["row"]: json.loads(x) for x in (tmp_path / "scored.rejects.jsonl").read_text().splitlines()}
    assert {r: v["reason"] for r, v in rejects.items()} == {1: "identical_truncated", 3: "prompt_too_long"}
    assert "same 40 tokens after truncation to max_length=40" in rejects[1]["detail"]
    assert pl.read_parquet(out).height == 1 and "warning" not in result.stderr  # 40 < the context (4096)

    short = _short_context_model(tiny_model_dir, tmp_path / "short", 64)
    for flag, why, long_prompt in (("0", "--max_length 0 (no truncation) exceeds", "too_long"),
                                   ("100", "--max_length 100 exceeds", "prompt_too_long")):
        out = tmp_path / f"s{flag}.parquet"
        result = invoke("curate", "score", data, "--model", short, "--out", out, "--max_length", flag, "--no-cache")
        assert result.exit_code == 0, result.output
        assert f"warning: {why} the model's context of 64 tokens" in result.stderr
        rejects = [json.loads(x) for x in (tmp_path / f"s{flag}.rejects.jsonl").read_text().splitlines()]
        assert [(r["row"], r["reason"]) for r in rejects] == [(1, "too_long"), (3, long_prompt)]
        assert "exceed the model's context of 64 tokens" in rejects[0]["detail"]
        assert pl.read_parquet(out).height == 1


def _scored(path: Path, n: int, sources) -> Path:
    """`n` canonical pairs with `margin` and the given sources (cycled): a scored file without a model."""
    from sdpo_kit.data import load_pairs
    from sdpo_kit.io import write_parquet

    rows = [{"prompt": f"Q{i}?", "chosen": f"Yes {i}.", "rejected": f"No {i}.", "source": sources[i % len(sources)]}
            for i in range(n)]
    pairs = load_pairs(pairs_jsonl(path.with_suffix(".jsonl"), rows)).pairs
    return write_parquet(path, pairs.with_columns(margin=pl.Series([float(i % 13) for i in range(n)]),
                                                  chosen_truncated=pl.lit(False), rejected_truncated=pl.lit(False)))


def test_too_many_sources_for_by_source_are_refused_with_a_hint(tmp_path):
    """Why: '10,000 distinct sources make `by-source` plan 10,000 steps without a word'."""
    from sdpo_kit.curate.strategies import MAX_SOURCE_STEPS

    scored = _scored(tmp_path / "scored.parquet", 10_000, [f"src{i}" for i in range(10_000)])
    out = tmp_path / "parts"
    line = one_line(invoke("curate", "split", scored, "--out", out, "--strategy", "by-source"), 2,
                    f"10,000 distinct sources would make 10,000 training steps (at most {MAX_SOURCE_STEPS}")
    assert "--steps N" in line and "--strategy easy-to-hard --stratify source" in line and not out.exists()
    fewer = _scored(tmp_path / "fewer.parquet", 120, [f"src{i}" for i in range(MAX_SOURCE_STEPS + 1)])
    one_line(invoke("curate", "split", fewer, "--out", out, "--strategy", "by-source"), 2, "33 distinct sources")
    result = invoke("curate", "split", fewer, "--out", out, "--strategy", "by-source", "--steps", "3")
    assert result.exit_code == 0, result.output  # grouped into 3 steps: a plan
    assert sorted(p.name for p in out.glob("step_*.parquet")) == ["step_1.parquet", "step_2.parquet", "step_3.parquet"]


# --- the file system past the boundary -----------------------------------------------------------


def test_out_through_a_symbolic_link_loop_is_one_line(tmp_path):
    """Why: '`--out` through a symlink loop' (pathlib's RuntimeError, or "File exists")."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    loop = tmp_path / "a"
    data = pairs_jsonl(tmp_path / "x.jsonl", ROWS)
    scored = _scored(tmp_path / "s.parquet", 6, ["s"])
    parts = tmp_path / "parts"
    assert invoke("curate", "split", scored, "--out", parts, "--steps", "2").exit_code == 0
    for args in (["data", "split", data, "--out", loop], ["curate", "split", scored, "--out", loop],
                 ["curate", "score", data, "--model", tmp_path, "--out", loop / "x.parquet"],
                 ["data", "card", scored, "--out", loop], ["data", "inspect", loop],
                 ["train", "--partitions", parts, "--model", tmp_path, "--out", loop]):
        one_line(invoke(*args), 1, "a symbolic link loop (following it never reaches a file or folder)")


def test_library_write_errors_on_a_full_disk_are_one_line():
    from sdpo_kit.cli import user_error

    class SafetensorError(Exception):
        pass

    code, line = user_error(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert code == 1 and line.startswith("the disk is full (SafetensorError: ") and "--resume" in line
    assert user_error(RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed "
                                   "writing file data/0: file write failed"))[0] == 1
    assert user_error(RuntimeError("boom")) is None  # a bug keeps its traceback


def _unshare_ok() -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="needs user namespaces (unshare -rm) to mount a small tmpfs")
def test_disk_full_during_train_and_resume_is_one_line(tiny_model_dir, tmp_path):
    """Why: 'disk full during `train` (and again on `--resume`)': a real 1 MB tmpfs, a real tiny run."""
    import subprocess
    import sys

    from conftest import REPO

    rows = [dict(r, chosen=r["chosen"] + " More words here.") for r in ROWS]
    data = pairs_jsonl(tmp_path / "x.jsonl", rows)
    scored = tmp_path / "scored.parquet"
    assert invoke("curate", "score", data, "--model", tiny_model_dir, "--out", scored, "--no-cache").exit_code == 0
    parts = tmp_path / "parts"
    assert invoke("curate", "split", scored, "--out", parts, "--steps", "2").exit_code == 0
    disk = tmp_path / "disk"
    disk.mkdir()
    train = (f"{sys.executable} -c 'import sys; sys.argv[0] = \"sdpo\"; from sdpo_kit.cli import main; main()' train "
             f"--partitions {parts} --model {tiny_model_dir} --out {disk}/run --max_steps 1 "
             f"--per_device_train_batch_size 2")
    script = (f"mount -t tmpfs -o size=1m tmpfs {disk} && {train} 2>{tmp_path}/e1; echo $? > {tmp_path}/rc1; "
              f"{train} --resume 2>{tmp_path}/e2; echo $? > {tmp_path}/rc2")
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env={**os.environ, "PYTHONPATH": str(REPO)},
                   timeout=600, check=True)
    for k in ("1", "2"):
        err = (tmp_path / f"e{k}").read_text().replace("\r", "\n")
        lines = [x for x in err.splitlines() if "error" in x.lower() or "Traceback" in x]
        assert (tmp_path / f"rc{k}").read_text().strip() == "1" and "Traceback" not in err, err[-2000:]
        assert len(lines) == 1 and lines[0].startswith("error: the disk is full (") and "No space left" in lines[0]
