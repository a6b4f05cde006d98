"""Data layer: every format, every container, every reject reason (with its row number).

    python -m pytest -q tests/test_data.py
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdpo_kit.data import iter_pairs, load_pairs


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def naive_pair_id(prompt, chosen, rejected) -> str:
    """The contract of docs/ARCHITECTURE.md, written out again."""
    blob = json.dumps([prompt, chosen, rejected], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def only_pair(result, index=0) -> dict:
    return result.pairs.row(index, named=True)


# --- formats ---------------------------------------------------------------------------------


def test_trl_standard(tmp_path):
    f = write_jsonl(tmp_path / "std.jsonl", [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": 7}])
    r = load_pairs(f)
    assert r.format == "trl-standard" and r.rows == 1 and not r.rejects
    assert r.pairs.columns == ["pair_id", "prompt", "chosen", "rejected", "source", "id"]
    p = only_pair(r)
    assert (p["prompt"], p["chosen"], p["rejected"]) == ([user("2+2?")], [bot("4")], [bot("5")])
    assert p["pair_id"] == naive_pair_id([user("2+2?")], [bot("4")], [bot("5")])
    assert p["source"] == "std" and p["id"] == 7


def test_trl_conversational_explicit_prompt(tmp_path):
    prompt = [{"role": "system", "content": "Be brief."}, user("Hi"), bot("Hello"), user("Capital of France?")]
    f = write_jsonl(tmp_path / "conv.jsonl", [{"prompt": prompt, "chosen": [bot("Paris")], "rejected": [bot("Rome")]}])
    r = load_pairs(f)
    assert r.format == "trl-conversational"
    assert only_pair(r)["prompt"] == prompt and only_pair(r)["rejected"] == [bot("Rome")]


def test_trl_conversational_implicit_prompt(tmp_path):
    history = [user("Hi"), bot("Hello"), user("Capital of France?")]
    row = {"chosen": history + [bot("Paris")], "rejected": history + [bot("Rome")], "source": "geo"}
    r = load_pairs(write_jsonl(tmp_path / "implicit.jsonl", [row]))
    p = only_pair(r)
    assert r.format == "trl-conversational" and p["prompt"] == history
    assert (p["chosen"], p["rejected"], p["source"]) == ([bot("Paris")], [bot("Rome")], "geo")


def test_sharegpt_roles_mapped(tmp_path):
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q1"},
                             {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"}],
           "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}
    f = tmp_path / "sg.json"
    f.write_text(json.dumps([row]))
    r = load_pairs(f)
    p = only_pair(r)
    assert r.format == "sharegpt" and p["source"] == "sg"
    assert p["prompt"] == [{"role": "system", "content": "S"}, user("Q1"), bot("A1"), user("Q2")]
    assert p["pair_id"] == naive_pair_id(p["prompt"], [bot("good")], [bot("bad")])


def test_hh_turns_split_and_content_kept(tmp_path):
    shared = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke"
    row = {"chosen": shared + "\n\nAssistant: Why did the chicken...", "rejected": shared + "\n\nAssistant: No."}
    r = load_pairs(write_jsonl(tmp_path / "hh.jsonl", [row]))
    p = only_pair(r)
    assert r.format == "hh"
    assert p["prompt"] == [user("Hi there"), bot("Hello!"), user("Tell me a joke")]
    assert p["chosen"] == [bot("Why did the chicken...")] and p["rejected"] == [bot("No.")]


def test_format_forced_and_columns_mapped(tmp_path):
    rows = [{"instruction": "Say hi", "good": "hi", "bad": "bye", "origin": "x"}]
    f = write_jsonl(tmp_path / "mapped.jsonl", rows)
    cols = {"prompt": "instruction", "chosen": "good", "rejected": "bad", "source": "origin"}
    p = only_pair(load_pairs(f, format="trl-standard", columns=cols))
    assert (p["prompt"], p["chosen"], p["source"]) == ([user("Say hi")], [bot("hi")], "x")
    with pytest.raises(ValueError, match="unknown format"):
        load_pairs(f, format="alpaca")
    # Without the mapping the file has no chosen/rejected columns: a file-level error (issue 11), not N rejects.
    with pytest.raises(ValueError, match=r"mapped.jsonl: not preference data: .*columns: bad, good, instruction.*--chosen_col"):
        load_pairs(f)


# --- containers ------------------------------------------------------------------------------

ROWS = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "n": i} for i in range(5)]


def _gz(path: Path) -> Path:
    out = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return out


def _jsonl(d: Path) -> Path:
    return write_jsonl(d / "pairs.jsonl", ROWS)


def _json(d: Path) -> Path:
    (d / "pairs.json").write_text(json.dumps(ROWS))
    return d / "pairs.json"


def _parquet(d: Path) -> Path:
    pl.DataFrame(ROWS).write_parquet(d / "pairs.parquet", row_group_size=2)
    return d / "pairs.parquet"


def _csv(d: Path) -> Path:
    with open(d / "pairs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    return d / "pairs.csv"


def _save_to_disk(d: Path) -> Path:
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(d / "pairs"))
    return d / "pairs"


def _shards(d: Path) -> Path:
    (d / "pairs").mkdir()
    write_jsonl(d / "pairs" / "b.jsonl", ROWS[2:])
    pl.DataFrame(ROWS[:2]).write_parquet(d / "pairs" / "a.parquet")
    (d / "pairs" / "notes.txt").write_text("not data")
    (d / "pairs" / "old.rejects.jsonl").write_text('{"file": "x"}\n')
    return d / "pairs"


CONTAINERS = {"jsonl": _jsonl, "jsonl.gz": lambda d: _gz(_jsonl(d)), "json": _json, "json.gz": lambda d: _gz(_json(d)),
              "parquet": _parquet, "parquet.gz": lambda d: _gz(_parquet(d)), "csv": _csv,
              "csv.gz": lambda d: _gz(_csv(d)), "save_to_disk": _save_to_disk, "shards": _shards}


@pytest.mark.parametrize("container", list(CONTAINERS))
def test_container(tmp_path, container):
    path = CONTAINERS[container](tmp_path)
    r = load_pairs(path)
    assert (r.format, r.rows, r.pairs.height, r.rejects) == ("trl-standard", 5, 5, [])
    assert [p[0]["content"] for p in r.pairs["prompt"]] == [f"q{i}" for i in range(5)]
    assert r.pairs["source"].unique().to_list() == ["pairs"]
    expected_n = [str(i) for i in range(5)] if container.startswith("csv") else list(range(5))
    assert r.pairs["n"].to_list() == expected_n  # passed through (CSV values are strings)


def test_parquet_passthrough_keeps_dtypes(tmp_path):
    table = pa.table({"prompt": ["a", "b"], "chosen": ["x", "y"], "rejected": ["z", "w"],
                      "score": pa.array([1, 2], pa.int16()), "tags": [["t1"], []],
                      "when": pa.array([0, 86400], pa.date32())})
    pq.write_table(table, tmp_path / "typed.parquet")
    pairs = load_pairs(tmp_path / "typed.parquet").pairs
    assert pairs.schema["score"] == pl.Int16 and pairs.schema["tags"] == pl.List(pl.String)
    assert pairs.schema["when"] == pl.Date and pairs["tags"].to_list() == [["t1"], []]


def test_shard_rejects_keep_their_file_and_row(tmp_path):
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "1.jsonl", [ROWS[0], {**ROWS[1], "chosen": ""}])
    write_jsonl(tmp_path / "d" / "2.jsonl", [ROWS[2], ROWS[0]])
    r = load_pairs(tmp_path / "d")
    assert [(x.file, x.row, x.reason) for x in r.rejects] == [("1.jsonl", 2, "empty"), ("2.jsonl", 2, "duplicate")]
    assert "1.jsonl:1" in r.rejects[1].detail and r.pairs.height == 2 and r.rows == 4


def test_datasetdict_dir_is_refused_with_its_splits(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="train"):
        load_pairs(tmp_path / "dd")


def test_canonical_pairs_load_back_unchanged(tmp_path):
    """A canonical file (what curate writes) is itself valid input and a fixed point."""
    first = load_pairs(write_jsonl(tmp_path / "std.jsonl", ROWS)).pairs
    first.write_parquet(tmp_path / "canonical.parquet")
    again = load_pairs(tmp_path / "canonical.parquet")
    assert again.format == "trl-conversational" and again.pairs.equals(first)


def test_empty_file_bom_and_jsonl_named_json(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    r = load_pairs(tmp_path / "empty.jsonl")
    assert (r.rows, r.pairs.height, r.rejects) == (0, 0, []) and r.pairs.columns[0] == "pair_id"
    (tmp_path / "bom.csv").write_bytes("\ufeffprompt,chosen,rejected\nq,a,b\n".encode())
    assert load_pairs(tmp_path / "bom.csv").pairs.height == 1
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in ROWS[:2]) + "\n{oops\n")
    r = load_pairs(tmp_path / "lines.json")
    assert r.pairs.height == 2 and [(x.row, x.reason, x.raw) for x in r.rejects] == [(3, "unparsable", "{oops")]
    assert r.summary() == "3 rows (trl-standard): 2 valid, 1 rejected (unparsable 1)"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_pairs(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_pairs(tmp_path / "missing.jsonl")


def test_parquet_streamed_in_batches_keeps_row_numbers(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[3]["rejected"] = rows[3]["chosen"]
    pl.DataFrame(rows).write_parquet(tmp_path / "p.parquet", row_group_size=2)
    chunks = list(iter_pairs(tmp_path / "p.parquet", batch_rows=2))
    assert [c.rows for c in chunks] == [2, 2, 1]
    assert [(r.file, r.row, r.reason) for c in chunks for r in c.rejects] == [("p.parquet", 4, "identical")]
    assert [n for c in chunks for n in c.pairs["n"]] == [0, 1, 2, 4]
