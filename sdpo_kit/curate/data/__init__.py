"""The data layer: preference pairs in any common layout -> one canonical schema, nothing lost.

    sdpo data inspect data/hh_harmless_base_test.jsonl.gz

    from sdpo_kit.curate.data import load_pairs, write_rejects, rejects_path
    result = load_pairs("pairs.jsonl", columns={"prompt": "instruction"})
    write_rejects(result.rejects, rejects_path("out.parquet"))

Modules: `containers` (files -> raw rows), `formats` (raw row -> messages), `load` (pairs,
rejects, duplicates, strict mode), `stats` (what `sdpo data inspect` prints).
"""

from sdpo_kit.curate.data.formats import FORMATS, pair_id
from sdpo_kit.curate.data.load import DataError, LoadResult, Reject, iter_pairs, load_pairs, rejects_path, write_rejects
from sdpo_kit.curate.data.stats import prompt_text

__all__ = ["FORMATS", "DataError", "LoadResult", "Reject", "iter_pairs", "load_pairs", "pair_id", "prompt_text",
           "rejects_path", "write_rejects"]
