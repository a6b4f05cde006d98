"""The three real files in data/, and `sdpo data inspect` in-process.

    python -m pytest -q tests/test_data_shared.py

Each count the loader reports is checked against a count made here with polars/json alone,
row numbers included; the issue's figures are checked against those independent counts.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import shared
from sdpo_kit.cli import app
from sdpo_kit.data import load_pairs

MESSY = Path(__file__).parent / "fixtures" / "data" / "messy.jsonl"


def inspect_json(*args) -> dict:
    result = CliRunner().invoke(app, ["data", "inspect", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # exactly one JSON object, nothing else


def rows_of(rejects, reason, detail_has: str = "") -> list[int]:
    return [r.row for r in rejects if r.reason == reason and detail_has in r.detail]


def test_alpaca_eval_counts():
    path = shared("alpaca_eval_pairs.parquet")
    df = pl.read_parquet(path).with_row_index("row", offset=1)
    exact = df.filter(pl.col("chosen") == pl.col("rejected"))["row"].to_list()
    stripped = df.filter(pl.col("chosen").str.strip_chars() == pl.col("rejected").str.strip_chars())
    empty = df.filter((pl.col("chosen").str.strip_chars() == "") | (pl.col("rejected").str.strip_chars() == ""))
    # Duplicates among the rows that survive the per-row checks (the first copy is kept).
    rest = df.filter(~pl.col("row").is_in(stripped["row"].to_list() + empty["row"].to_list()))
    dups = rest.filter(~pl.struct("prompt", "chosen", "rejected").is_first_distinct())["row"].to_list()
    assert (df.height, len(exact), stripped.height, empty.height, len(dups)) == (18982, 63, 65, 1, 240)

    out = inspect_json(path)
    assert out["format"] == "trl-standard" and out["rows"] == df.height
    assert out["reasons"] == {"identical": stripped.height, "empty": empty.height, "duplicate": len(dups)}
    assert out["valid"] + sum(out["reasons"].values()) == out["rows"] == out["valid"] + out["rejected"]
    assert out["sources"] == dict(rest.filter(~pl.col("row").is_in(dups))["source"].value_counts().iter_rows())

    r = load_pairs(path)
    assert rows_of(r.rejects, "identical") == stripped["row"].to_list()
    exact_rows = [x.row for x in r.rejects if x.reason == "identical" and "after stripping" not in x.detail]
    assert exact_rows == exact  # the reject detail tells exact copies from whitespace-only differences
    assert rows_of(r.rejects, "empty") == empty["row"].to_list() and rows_of(r.rejects, "duplicate") == dups
    assert r.pairs.columns[5:] == [c for c in df.columns if c not in ("row", "prompt", "chosen", "rejected", "source")]
    assert r.pairs.schema["judge_confidence"] == pl.Float64


def test_dpo_en_demo_counts():
    path = shared("dpo_en_demo.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    seen, dups = set(), []
    for row, item in enumerate(data, 1):
        key = json.dumps(item, sort_keys=True)
        (dups.append(row) if key in seen else seen.add(key))
    assert (len(data), len(dups)) == (300, 5)

    out = inspect_json(path)
    assert (out["format"], out["rows"], out["reasons"]) == ("sharegpt", len(data), {"duplicate": len(dups)})
    assert out["valid"] + sum(out["reasons"].values()) == out["rows"]
    assert rows_of(load_pairs(path).rejects, "duplicate") == dups


def test_hh_harmless_counts():
    path = shared("hh_harmless_base_test.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        data = [json.loads(line) for line in f]
    mismatch, empty = [], []
    for row, item in enumerate(data, 1):
        (cp, ca), (rp, ra) = (t.rsplit("\n\nAssistant:", 1) for t in (item["chosen"], item["rejected"]))
        if cp != rp:
            mismatch.append(row)
        elif not ca.strip() or not ra.strip():
            empty.append(row)
    # The issue names the 5 mismatches; the data also holds 4 empty chosen answers.
    assert (len(data), len(mismatch), len(empty)) == (2312, 5, 4)

    out = inspect_json(path)
    assert (out["format"], out["rows"]) == ("hh", len(data))
    assert out["reasons"] == {"prompt_mismatch": len(mismatch), "empty": len(empty)}
    assert out["valid"] + sum(out["reasons"].values()) == out["rows"]
    r = load_pairs(path)
    assert rows_of(r.rejects, "prompt_mismatch") == mismatch and rows_of(r.rejects, "empty") == empty


def test_cli_inspect_messy_json_and_rejects_file(tmp_path):
    out = inspect_json(MESSY, "--rejects", tmp_path / "r.jsonl")
    assert (out["format"], out["rows"], out["valid"], out["rejected"]) == ("trl-conversational", 12, 2, 10)
    assert out["reasons"]["identical"] == 2 and out["examples"]["duplicate"].startswith("messy.jsonl:9:")
    lines = (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["row"] for x in lines] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]


def test_cli_inspect_human_output_and_strict():
    result = CliRunner().invoke(app, ["data", "inspect", str(MESSY)])
    assert result.exit_code == 0 and "prompt_mismatch" in result.output and "Lengths (chars)" in result.output
    result = CliRunner().invoke(app, ["data", "inspect", str(MESSY), "--strict"])
    assert result.exit_code == 1 and "messy.jsonl:2: unparsable" in result.output


def test_cli_column_flags_and_format(tmp_path):
    f = tmp_path / "custom.csv"
    f.write_text("instruction,good,bad,origin\nSay hi,hi,bye,web\nSay no,no,no,web\n")
    out = inspect_json(f, "--prompt-col", "instruction", "--chosen-col", "good", "--rejected-col", "bad",
                       "--source-col", "origin", "--format", "trl-standard")
    assert (out["rows"], out["valid"], out["reasons"], out["sources"]) == (2, 1, {"identical": 1}, {"web": 1})
    result = CliRunner().invoke(app, ["data", "inspect", str(f), "--format", "nope"])
    assert result.exit_code == 2 and "unknown format" in result.output


def test_cli_inspect_token_lengths(tiny_model_dir, smollm_tokenizer):
    out = inspect_json(MESSY, "--model", tiny_model_dir)
    valid = load_pairs(MESSY).pairs
    chosen = [len(smollm_tokenizer(m[0]["content"], add_special_tokens=False)["input_ids"]) for m in valid["chosen"]]
    assert out["tokens"]["chosen"]["max"] == max(chosen) and out["tokens"]["chosen"]["min"] == min(chosen)
    assert out["chars"]["chosen"]["max"] == max(len(m[0]["content"]) for m in valid["chosen"])
