"""The data layer: preference pairs in any common layout -> one canonical schema, nothing lost.

    sdpo data inspect data/hh_harmless_base_test.jsonl.gz

    from sdpo_kit.data import load_pairs, write_rejects, rejects_path
    result = load_pairs("pairs.jsonl", columns={"prompt": "instruction"})
    write_rejects(result.rejects, rejects_path("out.parquet"))

Modules: `containers` (files -> raw rows), `formats` (raw row -> messages), `load` (pairs,
rejects, duplicates, strict mode). `sdpo data inspect` and `sdpo data split` are curate's
(`sdpo_kit/curate/inspect.py`, `heldout.py`).
"""

from sdpo_kit.data.formats import FORMATS, pair_id
from sdpo_kit.data.load import (DataError, LoadResult, Reject, iter_pairs, load_pairs, prompt_text, rejects_path,
                                write_rejects)

__all__ = ["FORMATS", "DataError", "LoadResult", "Reject", "iter_pairs", "load_pairs", "pair_id", "prompt_text",
           "rejects_path", "write_rejects"]
