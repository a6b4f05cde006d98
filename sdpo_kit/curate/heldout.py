"""Train / held-out (/ validation) split of preference data with no prompt on two sides.

    sdpo data split data/dpo_en_demo.json --heldout 0.2 --by prompt --seed 0 --out split/

Groups the pairs by their key (`--by prompt`: the prompt's last turn, `prompt_text()`; `--by
pair`: the pair itself), shuffles the distinct keys with `numpy.random.default_rng(seed)` and
gives the first `round(heldout * keys)` to held-out, the next `round(validation * keys)` to
validation and the rest to train. Every pair of a key lands on the key's side, so with `--by
prompt` no prompt is ever trained on and evaluated on: this is asserted on the written files
and recorded in `manifest.json` (`overlap`). The same seed gives the same sides, and the
analysis (`analysis/reproduce_sdpo.py`) splits its prompts with `assign_sides` too.

Writes `OUT/train.parquet`, `OUT/heldout.parquet`, `OUT/validation.parquet` (only with
`--validation`), `OUT/rejects.jsonl` (rows the data layer rejected) and `OUT/manifest.json`
(with each file's sha256), as one folder swapped in at the end (`io.atomic_dir`): a kill leaves
the old split or the new one, never a mix. An earlier split is replaced only with `--overwrite`,
never one holding the input, and one writer at a time (`io.folder_lock`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from sdpo_kit.errors import InputError, UsageError
from sdpo_kit.io import sha256_file

BY = ("prompt", "pair")
SIDES = ("train", "validation", "heldout")


@dataclass
class HeldoutConfig:
    """Train / held-out (/ validation) files with no prompt on two sides, checked and recorded in manifest.json."""

    data: str = field(metadata={"help": "Preference data: any file or folder `sdpo data inspect` reads.",
                                "positional": True})
    out: str = field(metadata={"help": "Folder for train.parquet, heldout.parquet, manifest.json."})
    heldout: float = field(default=0.2, metadata={"help": "Share of distinct keys (prompts) held out, in (0, 1)."})
    validation: float = field(default=0.0, metadata={
        "help": "Share of distinct keys for a validation side (tuning without touching held-out); 0 = none."})
    by: str = field(default="prompt", metadata={
        "help": "`prompt`: a prompt's pairs stay together (no prompt on two sides); `pair`: pairs split alone."})
    seed: int = field(default=0, metadata={"help": "Seed of the key shuffle; the same seed gives the same sides."})
    format: str | None = field(default=None, metadata={"help": "Force the input format (default: detected)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an earlier split in --out."})

    def __post_init__(self):
        if self.by not in BY:
            raise UsageError(f"--by {self.by!r}: expected one of {', '.join(BY)}")
        if not 0 < self.heldout < 1:
            raise UsageError(f"--heldout {self.heldout}: expected a share strictly between 0 and 1")
        if not 0 <= self.validation < 1 or self.heldout + self.validation >= 1:
            raise UsageError(f"--validation {self.validation}: expected a share >= 0 with heldout + validation < 1 "
                             f"(here {self.heldout + self.validation:g}), so some pairs are left to train on")


def assign_sides(keys: list[str], heldout: float, validation: float, seed: int) -> dict[str, list[str]]:
    """Distinct `keys` (sorted, then shuffled with `seed`): first the held-out share, then validation, rest train."""
    import numpy as np

    distinct = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(distinct))
    shuffled = [distinct[i] for i in order]
    n_held, n_val = round(heldout * len(distinct)), round(validation * len(distinct))
    return {"heldout": shuffled[:n_held], "validation": shuffled[n_held:n_held + n_val],
            "train": shuffled[n_held + n_val:]}


def key_expr(by: str):
    """The polars expression a split groups on: the prompt's last turn, or the pair id."""
    import polars as pl

    from sdpo_kit.data import prompt_text

    return prompt_text() if by == "prompt" else pl.col("pair_id")


def overlap(frames: dict) -> dict[str, int]:
    """Pair ids and prompts found on more than one side (each counted once)."""
    from sdpo_kit.data import prompt_text

    counts = {}
    for name, expr in [("pair_id", None), ("prompt", prompt_text())]:
        seen: dict[str, int] = {}
        for df in frames.values():
            values = df["pair_id"] if expr is None else df.select(expr.alias("k"))["k"]
            for v in set(values.to_list()):
                seen[v] = seen.get(v, 0) + 1
        counts[name] = sum(1 for n in seen.values() if n > 1)
    return counts


def _side_info(df, file: str) -> dict:
    from sdpo_kit.data import prompt_text

    sources = dict(sorted(df["source"].value_counts().iter_rows())) if df.height else {}
    return {"file": file, "pairs": df.height, "prompts": df.select(prompt_text().n_unique()).item() if df.height else 0,
            "sources": sources}


COMMAND = "sdpo data split"


def run(cfg: HeldoutConfig) -> dict:
    """`sdpo data split`: write the sides and manifest.json into `cfg.out`, print the summary; returns the manifest."""
    from sdpo_kit.io import folder_lock, same_or_inside
    from sdpo_kit.owner import claim_folder

    out, data = Path(cfg.out), Path(cfg.data)
    if data.is_dir() and same_or_inside(out, data):
        raise UsageError(f"--out {out}", f"is inside the input folder {data}; it would be read as input next time")
    with folder_lock(out, COMMAND):
        claim_folder(out, COMMAND, cfg.overwrite, inputs=[data])  # never over its own input, nor another's folder
        manifest = _split(cfg, out)
    print(summary(manifest))
    print(f"wrote {out}/ (" + ", ".join(v["file"] for v in manifest["sides"].values()) + ", manifest.json)")
    return manifest


def _split(cfg: HeldoutConfig, out: Path) -> dict:
    """Load, assign sides, check the overlap on what is written, write the folder atomically."""
    import polars as pl

    from sdpo_kit.data import load_pairs, write_rejects
    from sdpo_kit.io import atomic_dir, write_json, write_parquet
    from sdpo_kit.owner import write_owner

    if not Path(cfg.data).exists():  # here, not in __post_init__: a config is values, no file is read to build it
        raise InputError(cfg.data, "no such file or folder")
    loaded = load_pairs(cfg.data, format=cfg.format)
    pairs = loaded.pairs.with_columns(key_expr(cfg.by).alias("__key"))
    sides = assign_sides(pairs["__key"].to_list(), cfg.heldout, cfg.validation, cfg.seed)
    if not sides["heldout"] or not sides["train"]:
        raise InputError(cfg.data, f"{len(set(sides['heldout'] + sides['train'] + sides['validation']))} distinct "
                         f"{cfg.by}s: too few to hold out {cfg.heldout:g} and still train on the rest")
    names = [s for s in SIDES if s != "validation" or cfg.validation > 0]
    frames = {s: pairs.filter(pl.col("__key").is_in(pl.Series(sides[s], dtype=pl.String).implode())).drop("__key")
              for s in names}
    leaks = overlap(frames)
    # The promise of --by prompt, checked on what is written rather than trusted from the shuffle.
    assert leaks["pair_id"] == 0 and (cfg.by != "prompt" or leaks["prompt"] == 0), f"split leaked: {leaks}"
    manifest = {
        "config": asdict(cfg),
        "input": {"path": str(cfg.data), "sha256": sha256_file(cfg.data) if Path(cfg.data).is_file() else None, "rows": loaded.rows,
                  "valid": pairs.height, "rejected": len(loaded.rejects), "reasons": loaded.reasons},
        "keys": {s: len(sides[s]) for s in names},
        "sides": {s: _side_info(frames[s], f"{s}.parquet") for s in names},
        "overlap": {**leaks, "checked": "pair_id and prompt text (last turn) across every pair of sides"},
    }
    with atomic_dir(out, overwrite=True) as tmp:  # claim_folder decided whether `out` may be replaced
        for s in names:
            write_parquet(tmp / f"{s}.parquet", frames[s])
            manifest["sides"][s]["sha256"] = sha256_file(tmp / f"{s}.parquet")
        write_rejects(loaded.rejects, tmp / "rejects.jsonl")
        write_owner(tmp, COMMAND, input=str(Path(cfg.data).resolve()))
        write_json(tmp / "manifest.json", manifest)
    return manifest


def summary(manifest: dict) -> str:
    """One line per side and the overlap check, as the CLI prints it."""
    sides = manifest["sides"]
    parts = [f"{s} {v['pairs']:,} pairs ({v['prompts']:,} prompts)" for s, v in sides.items()]
    o = manifest["overlap"]
    by = manifest["config"]["by"]
    return (f"{manifest['input']['valid']:,} valid pairs ({manifest['input']['rejected']:,} rejected) split by {by}: "
            + ", ".join(parts) + f"; prompts on two sides: {o['prompt']}, pair ids on two sides: {o['pair_id']}")
