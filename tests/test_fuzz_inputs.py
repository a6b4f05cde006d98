"""Property: every command answers a corrupted input in one line, never a traceback, never touching it.

    pytest -q tests/test_fuzz_inputs.py

Seeded corruptions (truncated at a random byte, one random bit flipped, wrong types) of each
command's input: `data inspect`, `curate score` (data files), `curate split`, `data card`
(a scored parquet), `train` (a partitions folder), `eval`, `report` (a run folder). For each:
exit code != 0, stderr exactly one `error: ...` line, no traceback, input bytes unchanged.

A flipped bit may land on bytes that change nothing (a parquet statistic, padding): then the
command must succeed with exactly the clean input's result. sdpo_kit writes parquet page
checksums, so a flip in the data itself is always an error (checked: most seeds are errors).
Plain JSONL is left out on purpose: a damaged line there is one row's reject, by design.

Round 3 (issue 22): seeded JSONL with lone surrogates, invisible/bidi characters and pairs identical
once those are removed (each row a pair or a reject with the expected reason; cards show nothing
invisible raw), and alias-bomb YAML or a FIFO as any command's --config or data input (one line).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from sdpo_kit.cli import app
from sdpo_kit.data import load_pairs
from sdpo_kit.io import write_parquet

SEEDS = (0, 1, 2)


def truncate(blob: bytes, r: random.Random) -> bytes:
    return blob[: r.randrange(1, len(blob))]


def bitflip(blob: bytes, r: random.Random) -> bytes:
    out = bytearray(blob)
    i = r.randrange(len(out))
    out[i] ^= 1 << r.randrange(8)
    return bytes(out)


def digest(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def invoke(args: list) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        return 99, result.stdout, "Traceback\n" + "".join(traceback.format_exception(result.exception))
    return result.exit_code, result.stdout, result.stderr


def assert_answered(args: list, inputs: Path, clean=None, same=lambda: False) -> bool:
    """Run; exit != 0 with one `error:` line and no traceback, or (a benign flip) the clean result.
    Returns whether it was an error."""
    before = digest(inputs)
    code, out, err = invoke(args)
    assert digest(inputs) == before, f"{args}: the input was modified"
    assert "Traceback" not in err + out, f"{args}:\n{err[-3000:]}"
    if code == 0 and clean is not None:
        assert same(), f"{args}: exit 0 on a corrupted input but a different result (silently wrong)"
        return False
    lines = [x for x in err.splitlines() if x.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), (args, code, err, out)
    return True


TEXT = "alpha beta gamma delta epsilon zeta eta theta".split()


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"Q{i}: {TEXT[i % 8]}?", "chosen": f"Yes {i} {TEXT[(i + 3) % 8]}", "rejected": f"No {i}",
             "source": f"s{i % 3}"} for i in range(n)]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Clean inputs of every kind, written once."""
    d = tmp_path_factory.mktemp("clean")
    rows = _rows(24)
    files = {"parquet": write_parquet(d / "pairs.parquet", pl.DataFrame(rows))}
    (d / "pairs.json").write_text(json.dumps(rows))
    files["json"] = d / "pairs.json"
    with gzip.open(d / "pairs.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    files["jsonl.gz"] = d / "pairs.jsonl.gz"
    pairs = load_pairs(files["json"]).pairs
    scored = pairs.with_columns(pl.Series("margin", [((i * 37) % 11) - 5.0 for i in range(pairs.height)]),
                                pl.Series("chosen_truncated", [False] * pairs.height),
                                pl.Series("rejected_truncated", [False] * pairs.height))
    files["scored"] = write_parquet(d / "scored.parquet", scored)
    from sdpo_kit.curate.split import SplitConfig, split_file

    split_file(files["scored"], d / "parts", SplitConfig(steps=2))
    files["parts"] = d / "parts"
    return files


def corrupted(kind: str, src: Path, dest: Path, seed: int) -> Path:
    r = random.Random(seed)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes((truncate if kind == "truncated" else bitflip)(src.read_bytes(), r))
    return dest


# --- data files: data inspect and curate score --------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "json", "jsonl.gz"])
@pytest.mark.parametrize("kind", ["truncated", "bitflip"])
def test_data_file_corruptions(clean, tmp_path, tiny_model_dir, fmt, kind):
    errors = 0
    for seed in SEEDS:
        src = clean[fmt]
        bad = corrupted(kind, src, tmp_path / f"s{seed}" / src.name, seed)
        if bad.read_bytes() == src.read_bytes():
            continue
        expected = invoke(["data", "inspect", src, "--json"])[1]
        same = lambda: json.loads(invoke(["data", "inspect", bad, "--json"])[1]) | {"path": ""} == \
            json.loads(expected) | {"path": ""}  # noqa: E731
        if fmt == "json" and kind == "bitflip":
            continue  # a flipped bit in JSON text is valid JSON with other text (or one bad row): by design
        errors += assert_answered(["data", "inspect", bad, "--json"], bad, clean=src, same=same)
        out = tmp_path / f"s{seed}" / "scored.parquet"
        assert_answered(["curate", "score", bad, "--out", out, "--model", tiny_model_dir, "--no-cache"], bad,
                        clean=src, same=lambda: True if fmt != "parquet" else _same_pairs(out, src))
    if fmt != "json" or kind != "bitflip":
        assert errors >= 2, f"only {errors} of {len(SEEDS)} corruptions were errors"


def _same_pairs(out: Path, src: Path) -> bool:
    return pl.read_parquet(out)["pair_id"].to_list() == load_pairs(src).pairs["pair_id"].to_list()


def test_data_file_wrong_types(tmp_path, tiny_model_dir):
    cases = {
        "numbers.json": "[1, 2, 3]",
        "object.json": '{"prompt": "q", "chosen": "a", "rejected": "b"}',
        "strings.jsonl": '"a"\n"b"\n',
        "header.csv": "question,good,bad\nq,a,b\n",
    }
    for name, text in cases.items():
        bad = tmp_path / name
        bad.write_text(text)
        assert_answered(["data", "inspect", bad], bad)
        assert_answered(["curate", "score", bad, "--out", tmp_path / "o.parquet", "--model", tiny_model_dir], bad)
    typed = write_parquet(tmp_path / "typed.parquet", pl.DataFrame({"prompt": [1, 2], "chosen": [3, 4], "rejected": [5, 6]}))
    assert_answered(["curate", "score", typed, "--out", tmp_path / "t.parquet", "--model", tiny_model_dir], typed)


# --- scored parquet: curate split and data card -------------------------------------------------


@pytest.mark.parametrize("kind", ["truncated", "bitflip"])
def test_scored_file_corruptions(clean, tmp_path, kind):
    errors = 0
    src = clean["scored"]
    for seed in SEEDS:
        bad = corrupted(kind, src, tmp_path / f"s{seed}" / "scored.parquet", seed)
        parts = tmp_path / f"s{seed}" / "parts"

        def same_split():
            return all(pl.read_parquet(parts / f"step_{t}.parquet").equals(
                pl.read_parquet(clean["parts"] / f"step_{t}.parquet")) for t in (1, 2))

        errors += assert_answered(["curate", "split", bad, "--out", parts, "--steps", "2"], bad, clean=src, same=same_split)
        card = tmp_path / f"s{seed}" / "card"
        assert_answered(["data", "card", bad, "--out", card], bad, clean=src, same=lambda: (card / "README.md").exists())
    assert errors >= 2, f"only {errors} of {len(SEEDS)} corruptions were errors"


def test_scored_file_wrong_types(clean, tmp_path):
    df = pl.read_parquet(clean["scored"])
    for name, frame in {"text_margin": df.with_columns(pl.col("margin").cast(pl.String)),
                        "int_truncated": df.with_columns(pl.col("chosen_truncated").cast(pl.Int64)),
                        "no_rows": df.head(0)}.items():
        bad = write_parquet(tmp_path / f"{name}.parquet", frame)
        assert_answered(["curate", "split", bad, "--out", tmp_path / name, "--drop-truncated"], bad)


# --- partitions folder: train --------------------------------------------------------------------


def _parts_copy(clean, tmp_path, name: str) -> Path:
    import shutil

    dest = tmp_path / name
    shutil.copytree(clean["parts"], dest)
    return dest


@pytest.mark.parametrize("target,kind", [
    ("step_1.parquet", "truncated"),
    ("step_1.parquet", "bitflip"),
    ("manifest.json", "truncated"),
    ("manifest.json", "wrong_types"),
])
def test_train_on_corrupted_partitions(clean, tmp_path, tiny_model_dir, target, kind):
    parts = _parts_copy(clean, tmp_path, "parts")
    f = parts / target
    if kind == "wrong_types":
        f.write_text(json.dumps({"steps": "one, two", "strategy": 3}))
    elif kind == "bitflip":  # a bit of the first column's data (a flip in a statistic would change nothing)
        import pyarrow.parquet as pq

        col = pq.read_metadata(f).row_group(0).column(0)
        blob = bytearray(f.read_bytes())
        blob[col.data_page_offset + col.total_compressed_size // 2] ^= 1 << random.Random(0).randrange(8)
        f.write_bytes(bytes(blob))
    else:
        corrupted(kind, f, f, seed=0)
    assert_answered(["train", "--partitions", parts, "--model", tiny_model_dir, "--out", tmp_path / "run",
                     "--max_steps", "1"], parts)


# --- run folder: eval and report -----------------------------------------------------------------


RUN_JSON = {"mode": "stepwise", "base_model": "tiny", "partitions": "parts", "steps": [
    {"step": 1, "model": "step_1/model", "status": "done"}, {"step": 2, "model": "step_2/model", "status": "done"}]}


def flip_a_quote(blob: bytes, r: random.Random) -> bytes:
    """One bit flipped in one of the JSON's quote characters: certain to be malformed. (A flip inside
    a string value makes another valid document: a different input, not a corrupted one.)"""
    quotes = [i for i, b in enumerate(blob) if b == ord('"')]
    out = bytearray(blob)
    out[r.choice(quotes)] ^= 1 << r.randrange(8)
    return bytes(out)


def corrupted_run(tmp_path: Path, kind: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    text = json.dumps(RUN_JSON, indent=2).encode()
    r = random.Random(7)
    blob = {"truncated": truncate(text, r), "bitflip": flip_a_quote(text, r), "empty_object": b"{}",
            "wrong_types": json.dumps({"steps": 5, "base_model": ["x"]}).encode(), "binary": bytes(range(256))}[kind]
    (run / "run.json").write_bytes(blob)
    return run


@pytest.mark.parametrize("kind", ["truncated", "bitflip", "empty_object", "wrong_types", "binary"])
def test_eval_on_corrupted_run(clean, tmp_path, kind):
    run = corrupted_run(tmp_path, kind)
    assert_answered(["eval", "--run", run, "--data", clean["json"], "--out", tmp_path / "eval"], run)


@pytest.mark.parametrize("kind", ["truncated", "bitflip", "empty_object", "wrong_types", "binary"])
def test_report_on_corrupted_run(clean, tmp_path, kind):
    run = corrupted_run(tmp_path, kind)
    assert_answered(["report", run, "--out", tmp_path / "report"], run)


# --- round 3 (issue 22): text that is not what it seems, configs that explode, files that are not files


INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u202e", "\u202d", "\u2066", "\u2069",
             "\u200e", "\u200f", "\x07", "\x1b"]


def _sprinkle(text: str, r: random.Random, k: int) -> str:
    for _ in range(k):
        i = r.randrange(len(text) + 1)
        text = text[:i] + r.choice(INVISIBLE) + text[i:]
    return text


def _round3_rows(seed: int) -> tuple[list[str], dict[int, str]]:
    """JSONL lines of random pairs, some damaged on purpose, and the reason expected for each damaged row.

    Kinds: a lone surrogate escape (`\\ud800`..`\\udfff` without its partner) in any field -> non_utf8;
    rejected = chosen with invisible/bidi characters inserted -> identical; invisible characters in
    every field of a real pair (sources too) -> still a valid pair; a valid surrogate pair (emoji) -> valid."""
    r = random.Random(seed)
    lines, expected = [], {}
    for i in range(40):
        row = {"prompt": f"Q{i} {r.choice(TEXT)}?", "chosen": f"Yes {i} {r.choice(TEXT)} {r.choice(TEXT)}",
               "rejected": f"No {i} {r.choice(TEXT)}", "source": r.choice(["oasst", "koala", "vicuna"])}
        kind = r.choice(["clean", "surrogate", "invisible_copy", "sprinkled", "emoji"])
        if kind == "invisible_copy":
            row["rejected"] = _sprinkle(row["chosen"], r, r.randint(1, 3))
            expected[i + 1] = "identical"
        elif kind == "sprinkled":
            row = {k: _sprinkle(v, r, r.randint(1, 2)) for k, v in row.items()}
        line = json.dumps(row)
        if kind == "surrogate":
            field = r.choice(["prompt", "chosen", "rejected", "source"])
            escape = f"\\u{r.randrange(0xD800, 0xE000):04x}"
            line = line.replace(f'"{field}": "', f'"{field}": "{escape}', 1)
            expected[i + 1] = "non_utf8"
        elif kind == "emoji":
            line = line.replace('"chosen": "', '"chosen": "\\ud83d\\ude00 ', 1)
        lines.append(line)
    return lines, expected


@pytest.mark.parametrize("seed", SEEDS)
def test_round3_text_kinds_are_rows_or_counted_rejects(tmp_path, seed):
    """Lone surrogates, invisible/bidi characters and pairs identical once those are removed: every row
    a pair or a reject with its stable reason; the split and its card show no invisible character raw."""
    lines, expected = _round3_rows(seed)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(lines) + "\n")
    before = digest(data)
    code, out, err = invoke(["data", "inspect", data, "--json"])
    assert code == 0 and "Traceback" not in err, err
    report = json.loads(out)
    reasons: dict[str, int] = {}
    for reason in expected.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    assert report["rows"] == 40 and report["valid"] == 40 - len(expected) and report["reasons"] == reasons
    loaded = load_pairs(data)
    assert {x.row: x.reason for x in loaded.rejects} == expected
    json.dumps([x.to_dict() for x in loaded.rejects], ensure_ascii=False).encode("utf-8")  # rejects are real text
    scored = write_parquet(tmp_path / "scored.parquet", loaded.pairs.with_columns(
        pl.Series("margin", [float((i * 7) % 5) - 2 for i in range(loaded.pairs.height)]),
        pl.lit(False).alias("chosen_truncated"), pl.lit(False).alias("rejected_truncated")))
    for args in (["curate", "split", scored, "--out", tmp_path / "parts", "--strategy", "by-source"],
                 ["data", "card", scored, "--out", tmp_path / "card"]):
        code, out, err = invoke(args)
        assert code == 0 and "Traceback" not in err, err
    for card in (tmp_path / "parts" / "README.md", tmp_path / "card" / "README.md"):
        text = card.read_text(encoding="utf-8")
        body = text.split("\n---\n", 1)[1]  # the markdown under the YAML front matter
        assert not [c for c in body if c in INVISIBLE], card
    assert digest(data) == before


def _alias_bomb(r: random.Random) -> str:
    width, depth = r.randint(6, 12), r.randint(5, 8)
    names = [f"n{k}" for k in range(depth)]
    text = f"{names[0]}: &{names[0]} [{', '.join(['x'] * width)}]\n"
    for prev, name in zip(names, names[1:]):
        text += f"{name}: &{name} [{', '.join([f'*{prev}'] * width)}]\n"
    return text


COMMANDS = [["data", "inspect"], ["data", "split"], ["data", "card"], ["curate", "score"], ["curate", "split"],
            ["train"], ["eval"], ["report"]]


@pytest.mark.parametrize("seed", SEEDS)
def test_round3_alias_bombs_and_fifos_in_every_command(tmp_path, seed):
    """A YAML alias bomb (width^depth values from a few hundred bytes) as any command's --config, and a
    FIFO as its --config or data input: one `error:` line each, nothing written, never a hang."""
    import os

    r = random.Random(seed)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(r))
    assert bomb.stat().st_size < 1000
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    for words in COMMANDS:
        assert_answered([*words, "--config", bomb], bomb)
        assert_answered([*words, "--config", fifo], tmp_path / "bomb.yaml")
    for args in (["data", "inspect", fifo], ["data", "split", fifo, "--out", out],
                 ["curate", "score", fifo, "--out", out / "s.parquet", "--model", tmp_path],
                 ["curate", "split", fifo, "--out", out], ["data", "card", fifo, "--out", out]):
        assert_answered(args, tmp_path / "bomb.yaml")
    assert not out.exists()
