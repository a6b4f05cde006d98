"""Issue 11, curate side: nothing silently wrong in `curate score`, `curate split`, `data card`, `data inspect`.

One test per curate-side bullet of the issue's *Why*: stale resume (changed input, --limit,
--shard-rows, killed by SIGKILL or between shards), a corrupt cache or shard, output over input,
format detection by the first row, not-preference data, split/card/inspect input errors in one
line, strict-JSON manifests, folder permissions and temp folders, markup in source names.
Everything runs the CLI in-process (typer's CliRunner) on a tiny random model, except the one
SIGKILL, which needs a real process.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from sdpo_kit.cli import app
from sdpo_kit.data import load_pairs
from sdpo_kit.io import write_parquet

TEXT = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def rows(n: int, seed: int = 0) -> list[dict]:
    """n distinct trl-standard pairs (short, so the tiny model scores them in milliseconds)."""
    words = lambda i, k: " ".join(TEXT[(i * 7 + j * 3 + seed) % len(TEXT)] for j in range(k))  # noqa: E731
    return [{"prompt": f"Q{seed}.{i}: {words(i, 3)}?", "chosen": f"Yes {i}: {words(i, 4)}",
             "rejected": f"No {i}: {words(i + 1, 2)}"} for i in range(n)]


def jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def run(*args, env: dict | None = None):
    """The CLI in-process; stderr kept apart so 'one line' can be checked."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def one_line_error(result, code: int, *needles: str) -> str:
    """Assert: exit `code`, stderr is exactly one `error: ...` line containing every needle, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def score_args(data, out, model, *extra):
    return ["curate", "score", data, "--out", out, "--model", model, "--max-length", "64", *extra]


def expected_ids(data: Path, limit: int | None = None) -> list[str]:
    return load_pairs(data, limit=limit).pairs["pair_id"].to_list()


def kill_after(monkeypatch, shards: int):
    """Make the scorer die (KeyboardInterrupt) after writing `shards` shards: the state a SIGKILL
    between two shards leaves (finished shards + run.json in X.parquet.parts)."""
    import sdpo_kit.scoring.files as sr

    real, done = sr._write_shard, []

    def dying(*a, **k):
        if len(done) == shards:
            raise KeyboardInterrupt("killed")
        real(*a, **k)
        done.append(1)

    monkeypatch.setattr(sr, "_write_shard", dying)
    return lambda: monkeypatch.setattr(sr, "_write_shard", real)


def partial_score(monkeypatch, data, out, model, shards, *extra):
    restore = kill_after(monkeypatch, shards)
    result = run(*score_args(data, out, model, *extra))
    assert result.exit_code == 130, result.output  # click turns the KeyboardInterrupt into Abort (130)
    restore()
    parts = out.with_name(out.name + ".parts")
    assert len(list(parts.glob("shard_*.sha256"))) == shards and not out.exists()


# --- stale resume ------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_then_rerun_with_another_input_never_mixes(tiny_model_dir, tmp_path):
    """Why: 'running it again with a different input file to the same --out prints scored 100
    pairs: they are the old file's pairs'. A real SIGKILL, then another file to the same --out."""
    old, new = jsonl(tmp_path / "old.jsonl", rows(240, seed=1)), jsonl(tmp_path / "new.jsonl", rows(30, seed=2))
    out = tmp_path / "scored.parquet"
    parts = out.with_name(out.name + ".parts")
    code = "import sys; sys.argv[0] = 'sdpo'; from sdpo_kit.cli import main; main()"
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", code, *score_args(old, out, tiny_model_dir, "--shard-rows", "2",
                                                                       "--no-cache")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(list(parts.glob("shard_*.sha256"))) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(list(parts.glob("shard_*.sha256"))) >= 3, "finished before the kill"

    result = run(*score_args(new, out, tiny_model_dir, "--shard-rows", "2", "--no-cache"))
    assert result.exit_code == 0, result.output
    assert "resume: starting afresh" in result.stderr and "input content (sha256)" in result.stderr
    scored = pl.read_parquet(out)
    assert scored.height == 30 and scored["pair_id"].to_list() == expected_ids(new)
    assert "scored 30 pairs" in result.stdout


def test_rerun_with_other_shard_rows_or_limit_never_mixes(tiny_model_dir, tmp_path, monkeypatch):
    """Why: 'rerunning a killed run with another --shard-rows gives 335 rows for a 300-row input,
    50 of them duplicate pair_ids'. Same for --limit: the rerun's rows are exactly its own."""
    data = jsonl(tmp_path / "pairs.jsonl", rows(60))
    out = tmp_path / "scored.parquet"
    partial_score(monkeypatch, data, out, tiny_model_dir, 2, "--shard-rows", "20")  # rows 1-40 done
    result = run(*score_args(data, out, tiny_model_dir, "--shard-rows", "15"))
    assert result.exit_code == 0, result.output
    assert "--shard_rows 20 -> 15" in result.stderr and "2 finished shard(s)" in result.stderr
    scored = pl.read_parquet(out)
    assert scored.height == 60 and scored["pair_id"].n_unique() == 60
    assert scored["pair_id"].to_list() == expected_ids(data)

    out2 = tmp_path / "limited.parquet"
    partial_score(monkeypatch, data, out2, tiny_model_dir, 1, "--shard-rows", "10", "--limit", "50")
    result = run(*score_args(data, out2, tiny_model_dir, "--shard-rows", "10", "--limit", "25"))
    assert result.exit_code == 0 and "--limit 50 -> 25" in result.stderr, result.output
    scored = pl.read_parquet(out2)
    assert scored.height == 25 and scored["pair_id"].to_list() == expected_ids(data, limit=25)


def test_rerun_with_same_settings_resumes_and_equals_whole_run(tiny_model_dir, tmp_path, monkeypatch):
    data = jsonl(tmp_path / "pairs.jsonl", rows(30))
    whole, out = tmp_path / "whole.parquet", tmp_path / "resumed.parquet"
    assert run(*score_args(data, whole, tiny_model_dir, "--shard-rows", "10")).exit_code == 0
    partial_score(monkeypatch, data, out, tiny_model_dir, 2, "--shard-rows", "10")
    result = run(*score_args(data, out, tiny_model_dir, "--shard-rows", "10"))
    assert result.exit_code == 0 and "afresh" not in result.stderr, result.output
    assert pl.read_parquet(out).equals(pl.read_parquet(whole))


def test_corrupt_shard_is_detected_and_rescored(tiny_model_dir, tmp_path, monkeypatch):
    """A finished shard damaged on disk (one flipped bit) is reported and scored again."""
    data = jsonl(tmp_path / "pairs.jsonl", rows(30))
    whole, out = tmp_path / "whole.parquet", tmp_path / "resumed.parquet"
    assert run(*score_args(data, whole, tiny_model_dir, "--shard-rows", "10", "--no-cache")).exit_code == 0
    partial_score(monkeypatch, data, out, tiny_model_dir, 2, "--shard-rows", "10", "--no-cache")
    shard = out.with_name(out.name + ".parts") / "shard_000001.parquet"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    shard.write_bytes(bytes(blob))
    result = run(*score_args(data, out, tiny_model_dir, "--shard-rows", "10", "--no-cache"))
    assert result.exit_code == 0, result.output
    assert "resume: shard_000001.parquet is truncated or corrupt (checksum mismatch); scoring it again" in result.stderr
    assert pl.read_parquet(out).equals(pl.read_parquet(whole))


def test_corrupt_cache_file_is_reported_and_recomputed(tiny_model_dir, tmp_path, monkeypatch):
    """Why: 'one truncated cache file makes every later score with that model crash'."""
    monkeypatch.setenv("SDPO_KIT_CACHE", str(tmp_path / "cache"))
    data = jsonl(tmp_path / "pairs.jsonl", rows(30))
    first = tmp_path / "first.parquet"
    assert run(*score_args(data, first, tiny_model_dir, "--shard-rows", "10")).exit_code == 0
    files = sorted((tmp_path / "cache" / "scores").glob("*/*.parquet"))
    assert len(files) == 3
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated
    blob = bytearray(files[1].read_bytes())
    blob[40] ^= 0x01  # one flipped bit: only the checksum in its name can tell
    files[1].write_bytes(bytes(blob))
    again = tmp_path / "again.parquet"
    result = run(*score_args(data, again, tiny_model_dir, "--shard-rows", "10"))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("score cache:") == 2 and "checksum mismatch" in result.stderr
    assert pl.read_parquet(again).equals(pl.read_parquet(first))
    # The rescored pairs went back in, under the same content-hash names, now whole and matching.
    assert len(list((tmp_path / "cache" / "scores").glob("*/*.parquet"))) == 3
    assert all(hashlib.sha256(f.read_bytes()).hexdigest()[:32] == f.stem for f in files)


# --- score: input and --out checked before the model, never over the input -----------------------


def test_score_out_over_input_is_refused(tiny_model_dir, tmp_path):
    """Why: '`sdpo curate score x.jsonl --out x.jsonl` replaces the input with parquet bytes, exit 0'."""
    data = jsonl(tmp_path / "x.jsonl", rows(5))
    before = sha(data)
    one_line_error(run(*score_args(data, data, tiny_model_dir)), 2, f"--out {data}: would overwrite the input")
    assert sha(data) == before
    # The rejects file beside --out (y.rejects.jsonl for y.parquet) may not replace the input either.
    rejects_named = jsonl(tmp_path / "y.rejects.jsonl", rows(5))
    one_line_error(run(*score_args(rejects_named, tmp_path / "y.parquet", tiny_model_dir)), 2, "would overwrite the input")
    folder = tmp_path / "shards"
    folder.mkdir()
    jsonl(folder / "a.jsonl", rows(3))
    one_line_error(run(*score_args(folder, folder / "scored.parquet", tiny_model_dir)), 2, "inside the input folder")


def test_score_checks_input_and_out_before_loading_the_model(tmp_path):
    """Why: 'curate score on a mistyped path loads the model before saying the file is missing' and
    'score --out an existing folder (after scoring everything)'. The model path does not exist
    either: the answer is about the input, so nothing was loaded."""
    no_model = tmp_path / "no-model"
    one_line_error(run(*score_args(tmp_path / "typo.jsonl", tmp_path / "o.parquet", no_model)), 1,
                   "typo.jsonl: no such file or directory")
    data = jsonl(tmp_path / "x.jsonl", rows(5))
    (tmp_path / "outdir").mkdir()
    one_line_error(run(*score_args(data, tmp_path / "outdir", no_model)), 2, "outdir: is a folder")
    assert not (tmp_path / "outdir.parts").exists()


# --- format detection ----------------------------------------------------------------------------


def test_an_odd_first_row_does_not_decide_the_format(tmp_path):
    """Why: 'one file whose first row is odd decides the format for all rows, so valid rows become wrong_type'."""
    odd = {"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}],
           "rejected": [{"role": "assistant", "content": "b"}]}
    data = jsonl(tmp_path / "x.jsonl", [odd, *rows(6)])
    result = load_pairs(data)
    assert result.format == "trl-standard" and result.pairs.height == 6
    assert [(r.row, r.reason) for r in result.rejects] == [(1, "wrong_type")]


def test_a_folder_may_mix_formats(tmp_path):
    """Why: 'a folder of shards in different formats rejects every valid row of the other formats'."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    jsonl(folder / "a_standard.jsonl", rows(4))
    sharegpt = [{"conversations": [{"from": "human", "value": f"q{i}"}], "chosen": {"from": "gpt", "value": f"y{i}"},
                 "rejected": {"from": "gpt", "value": f"n{i}"}} for i in range(3)]
    (folder / "b_sharegpt.json").write_text(json.dumps(sharegpt))
    hh = [{"chosen": f"\n\nHuman: h{i}\n\nAssistant: good", "rejected": f"\n\nHuman: h{i}\n\nAssistant: bad"}
          for i in range(2)]
    jsonl(folder / "c_hh.jsonl", hh)
    result = load_pairs(folder)
    assert result.pairs.height == 9 and not result.rejects
    assert result.format == "trl-standard, sharegpt, hh"


def test_not_preference_data_is_one_file_level_error(tmp_path):
    """Why: 'a file that is not preference data at all (no prompt/chosen/rejected anywhere, wrong
    CSV header) exits 0 with every row a reject'."""
    csv = tmp_path / "wrong.csv"
    csv.write_text("question,good,bad\nq1,a,b\nq2,c,d\n")
    one_line_error(run("data", "inspect", csv), 1, "wrong.csv: not preference data",
                   "columns: bad, good, question", "--prompt_col")
    numbers = tmp_path / "numbers.json"
    numbers.write_text("[1, 2, 3]")
    one_line_error(run("data", "inspect", numbers), 1, "numbers.json: not preference data")
    # The mapping flags make the same CSV valid.
    ok = run("data", "inspect", csv, "--prompt-col", "question", "--chosen-col", "good", "--rejected-col", "bad", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["valid"] == 2


# --- split / card / inspect input errors ---------------------------------------------------------


@pytest.fixture(scope="module")
def scored_file(tmp_path_factory) -> Path:
    """A scored-looking parquet (no model needed): canonical pairs + margins, four sources."""
    folder = tmp_path_factory.mktemp("scored")
    pairs = load_pairs(jsonl(folder / "p.jsonl", rows(40))).pairs
    df = pairs.with_columns(
        pl.Series("source", [f"s{i % 4}" for i in range(40)]),
        pl.Series("margin", [math.sin(i) * 3 for i in range(40)]),
        pl.Series("margin_per_token", [math.cos(i) for i in range(40)]),
        pl.Series("chosen_truncated", [False] * 40), pl.Series("rejected_truncated", [False] * 40))
    return write_parquet(folder / "scored.parquet", df)


def test_split_input_errors_are_one_line(scored_file, tmp_path):
    out = tmp_path / "parts"
    unscored = jsonl(tmp_path / "pairs.jsonl", rows(5))
    # Why: 'curate split on an unscored file gives a polars traceback ("File out of specification")'.
    one_line_error(run("curate", "split", unscored, "--out", out), 1, "pairs.jsonl: not a parquet file",
                   "run it first", "sdpo curate score")
    # Why: '--by margn advises "run sdpo curate score first" instead of listing the valid columns'.
    msg = one_line_error(run("curate", "split", scored_file, "--out", out, "--by", "margn"), 2,
                         "--by 'margn': no such column", "numeric columns: margin, margin_per_token")
    assert "curate score" not in msg
    # Why: '--by a string column'.
    one_line_error(run("curate", "split", scored_file, "--out", out, "--by", "source"), 2,
                   "--by 'source': is a String column, not a score", "numeric columns: margin")
    # Why: 'a string-typed margin'.
    text_margin = write_parquet(tmp_path / "text_margin.parquet",
                                pl.read_parquet(scored_file).with_columns(pl.col("margin").cast(pl.String)))
    one_line_error(run("curate", "split", text_margin, "--out", out), 1, "column 'margin' is String, not numbers")
    # Why: 'an empty folder given to split'.
    (tmp_path / "empty").mkdir()
    one_line_error(run("curate", "split", tmp_path / "empty", "--out", out), 1, "empty: is an empty folder")
    # Why: 'a corrupt or truncated parquet'.
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(scored_file.read_bytes()[:-100])
    one_line_error(run("curate", "split", cut, "--out", out), 1, "cut.parquet: truncated or corrupt parquet")
    flipped = tmp_path / "flipped.parquet"
    blob = bytearray(scored_file.read_bytes())
    blob[200] ^= 0x04  # inside the first data page: the page checksum catches it
    flipped.write_bytes(bytes(blob))
    one_line_error(run("curate", "split", flipped, "--out", out), 1, "flipped.parquet: corrupt or truncated parquet")
    one_line_error(run("data", "card", cut, "--out", tmp_path / "card"), 1, "cut.parquet: truncated or corrupt parquet")
    assert not out.exists() and not (tmp_path / "card").exists()


def test_inspect_model_that_is_not_a_model(tmp_path):
    """Why: '`data inspect --model` a non-model folder' (and a broken config.json) gave a traceback."""
    data = jsonl(tmp_path / "x.jsonl", rows(3))
    (tmp_path / "notamodel").mkdir()
    one_line_error(run("data", "inspect", data, "--model", tmp_path / "notamodel"), 1,
                   "holds no config.json: not a transformers model")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    one_line_error(run("data", "inspect", data, "--model", broken), 1, "broken: cannot load the tokenizer")


def test_manifest_is_strict_json_with_non_finite_counted(scored_file, tmp_path):
    """Why: '`inf` margins write `Infinity` into manifest.json (not valid JSON)'."""
    df = pl.read_parquet(scored_file).with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(float("inf")).otherwise(pl.col("margin")).alias("margin"))
    src = write_parquet(tmp_path / "inf.parquet", df)
    out = tmp_path / "parts"
    result = run("curate", "split", src, "--out", out, "--steps", "2")
    assert result.exit_code == 0, result.output
    text = (out / "manifest.json").read_text()

    def strict(token):
        raise ValueError(f"non-strict JSON token {token}")

    manifest = json.loads(text, parse_constant=strict)
    assert manifest["steps"][0]["mean_margin"] is None  # inf is the easiest pair: step 1's mean is inf
    assert manifest["non_finite_values"] >= 1 and "n/a (not finite)" in result.stdout


def test_split_folder_permissions_and_no_temp_left(scored_file, tmp_path):
    """Why: 'split folders are created 0700 regardless of umask and leave hidden temp folders behind after a kill'."""
    out = tmp_path / "parts"
    dead = tmp_path / ".parts.sdpo-tmp-999999999-abc"  # what a SIGKILLed split leaves (pid no longer runs)
    dead.mkdir()
    (dead / "step_1.parquet").write_text("half")
    old = os.umask(0o022)
    try:
        assert run("curate", "split", scored_file, "--out", out).exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


def test_no_command_writes_over_its_input(scored_file, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    inside = write_parquet(parts / "scored.parquet", pl.read_parquet(scored_file))
    before = sha(inside)
    one_line_error(run("curate", "split", inside, "--out", parts, "--overwrite"), 2, "would overwrite the input")
    one_line_error(run("data", "card", inside, "--out", parts, "--overwrite"), 2, "would overwrite the input")
    data = jsonl(tmp_path / "x.jsonl", rows(3))
    one_line_error(run("data", "inspect", data, "--rejects", data), 2, "would overwrite the input")
    assert sha(inside) == before and json.loads(data.read_text().splitlines()[0])["prompt"].startswith("Q0.0")


# --- markup in data ------------------------------------------------------------------------------


def test_source_names_are_escaped_in_cards_and_plots(scored_file, tmp_path):
    """Why: 'data-card tables put source names raw into markdown (a |, newline or <script> in a source
    name breaks or injects into the card). A source name containing $...$ makes mathtext abort the split.'"""
    evil = ["a|b", "line\nbreak", "<script>alert(1)</script>", "$\\frac{x$", "_hidden"]
    df = pl.read_parquet(scored_file).with_columns(pl.Series("source", [evil[i % 5] for i in range(40)]))
    src = write_parquet(tmp_path / "evil.parquet", df)
    for args in (["curate", "split", src, "--out", tmp_path / "parts", "--strategy", "by-source"],
                 ["data", "card", src, "--out", tmp_path / "card"]):
        result = run(*args)
        assert result.exit_code == 0, result.output
    for readme in (tmp_path / "parts" / "README.md", tmp_path / "card" / "README.md"):
        text = readme.read_text()
        assert "<script>" not in text and "&lt;script&gt;" in text
        tables, current = [], []  # consecutive "| " lines are one table
        for line in [*text.splitlines(), ""]:
            if line.startswith("| "):
                current.append(line)
            elif current:
                tables, current = [*tables, current], []
        assert tables
        for table in tables:  # every row of a table has its header's columns
            widths = {len(line.replace("\\|", "").split("|")) for line in table}
            assert len(widths) == 1, (widths, table)
        assert "a\\|b" in text
    assert (tmp_path / "parts" / "plots" / "source_mix.png").stat().st_size > 1000


def test_a_second_live_score_on_the_same_out_is_refused(tmp_path):
    """Two writers in one shard folder would mix rows: the second is refused while the first lives;
    a lock left by a killed run (dead pid) is taken over. Checked before the model loads."""
    data = jsonl(tmp_path / "x.jsonl", rows(5))
    out = tmp_path / "scored.parquet"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "scored.parquet.lock").write_text(f"{other.pid}\n")
        one_line_error(run(*score_args(data, out, tmp_path / "no-model")), 1,
                       f"another `sdpo curate score` (pid {other.pid}) is writing it")
    finally:
        other.kill()
        other.wait()
    result = run(*score_args(data, out, tmp_path / "no-model"))  # the dead pid's lock is taken over
    one_line_error(result, 1, "no-model")  # ...and the run gets as far as loading the (missing) model
