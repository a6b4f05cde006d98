"""Every reject reason, with its file and row number; strict mode; streaming; the rejects file.

    python -m pytest -q tests/test_data_rejects.py

`tests/fixtures/data/messy.jsonl` holds one row per problem (row 11 has a raw 0xE9 byte).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdpo_kit.data import DataError, Reject, iter_pairs, load_pairs, rejects_path, write_rejects

MESSY = Path(__file__).parent / "fixtures" / "data" / "messy.jsonl"
EXPECTED = {  # row -> reason; rows 1 and 12 are valid
    2: "unparsable", 3: "missing_field", 4: "wrong_type", 5: "empty", 6: "identical", 7: "identical",
    8: "prompt_mismatch", 9: "duplicate", 10: "unknown_role", 11: "non_utf8",
}


@pytest.fixture(scope="module")
def messy():
    return load_pairs(MESSY)


@pytest.mark.parametrize("row", sorted(EXPECTED))
def test_reject_reason_and_row(messy, row):
    [reject] = [r for r in messy.rejects if r.row == row]
    assert (reject.file, reject.reason) == ("messy.jsonl", EXPECTED[row])


def test_messy_accounts_for_every_row(messy):
    assert messy.rows == 12 and messy.pairs["id"].to_list() == [1, 12]
    assert messy.pairs.height + len(messy.rejects) == messy.rows
    by_row = {r.row: r for r in messy.rejects}
    assert by_row[2].raw.startswith('{"chosen"')  # an unparsable line keeps its text
    assert by_row[9].detail.endswith("messy.jsonl:1") and by_row[3].raw["id"] == 3
    assert "after stripping" in by_row[7].detail and "after stripping" not in by_row[6].detail
    assert "\ufffd" in by_row[11].raw and "'tool'" in by_row[10].detail


def test_keep_duplicates(tmp_path):
    r = load_pairs(MESSY, keep_duplicates=True)
    assert r.pairs["id"].to_list() == [1, 9, 12] and 9 not in {x.row for x in r.rejects}
    assert r.pairs["pair_id"][0] == r.pairs["pair_id"][1]


def test_hh_prompt_mismatch_and_unparsable(tmp_path):
    rows = [{"chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: D",
             "rejected": "\n\nHuman: A\n\nAssistant: X\n\nHuman: C\n\nAssistant: E"},
            {"chosen": "no markers at all", "rejected": "\n\nHuman: A\n\nAssistant: E"},
            {"chosen": "\n\nHuman: A\n\nAssistant: ", "rejected": "\n\nHuman: A\n\nAssistant: E"}]
    f = tmp_path / "hh.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = load_pairs(f, format="hh")
    assert [(x.row, x.reason) for x in r.rejects] == [(1, "prompt_mismatch"), (2, "unparsable"), (3, "empty")]


def test_non_utf8_in_json_array_and_csv(tmp_path):
    (tmp_path / "a.json").write_bytes(b'[{"prompt": "ok", "chosen": "a", "rejected": "b"},'
                                      b' {"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}]')
    r = load_pairs(tmp_path / "a.json")
    assert [(x.row, x.reason) for x in r.rejects] == [(2, "non_utf8")] and r.pairs.height == 1
    (tmp_path / "a.csv").write_bytes(b"prompt,chosen,rejected\nok,a,b\ncaf\xe9,a,b\nx,y,z,extra\n")
    r = load_pairs(tmp_path / "a.csv")
    assert [(x.row, x.reason) for x in r.rejects] == [(2, "non_utf8"), (3, "unparsable")]


def test_wrong_prompt_shape_is_rejected(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
             "chosen": [{"role": "assistant", "content": "x"}], "rejected": [{"role": "assistant", "content": "y"}]},
            {"prompt": "Q", "chosen": 3, "rejected": "y"}]
    f = tmp_path / "shape.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = load_pairs(f, format="trl-conversational")
    assert [(x.row, x.reason) for x in r.rejects] == [(1, "wrong_type"), (2, "wrong_type")]
    assert "must end with a user message" in r.rejects[0].detail


def test_strict_stops_at_first_bad_row_with_file_and_row():
    with pytest.raises(DataError) as e:
        load_pairs(MESSY, strict=True)
    assert str(e.value).startswith("messy.jsonl:2: unparsable: invalid JSON")


def test_iter_pairs_streams_chunks_and_catches_duplicates_across_them():
    chunks = list(iter_pairs(MESSY, batch_rows=4))
    assert [c.rows for c in chunks] == [4, 4, 4]
    assert [(r.row, r.reason) for r in chunks[2].rejects if r.reason == "duplicate"] == [(9, "duplicate")]
    assert sum(c.pairs.height for c in chunks) == 2 and {c.format for c in chunks} == {"trl-conversational"}


def test_limit_reads_only_the_first_rows():
    r = load_pairs(MESSY, limit=5)
    assert r.rows == 5 and r.pairs.height + len(r.rejects) == 5 and max(x.row for x in r.rejects) == 5


def test_write_rejects_roundtrip(tmp_path, messy):
    out = rejects_path(tmp_path / "pairs.parquet")
    assert out == tmp_path / "pairs.rejects.jsonl"
    write_rejects(messy.rejects, out)
    back = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [Reject(**d) for d in back] == messy.rejects
    assert set(back[0]) == {"file", "row", "reason", "detail", "raw"}
