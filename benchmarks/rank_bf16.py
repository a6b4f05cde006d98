"""Does a bf16 scoring pass keep the order of pairs? `sdpo curate score --dtype bfloat16` vs float32.

    python benchmarks/rank_bf16.py                  # 512 real pairs at 256 and 1,024 tokens (hours on 2 cores)
    python benchmarks/rank_bf16.py --pairs 32       # smoke

A seeded sample of data/alpaca_eval_pairs.parquet is scored by `sdpo curate score`'s engine
(`score_file` with the command's settings: token_budget 4096, the pair cache, shards) with the
default model in float32 and in bfloat16, at each `--lengths`. Per length: Spearman ρ of `margin`
and of the `_lc` key (`sdpo_kit.length.length_key`, the length-controlled order of
`sdpo curate split --control_length`), sign agreement of the margins, max and mean |Δ margin|,
the share of pairs that land in another step of a 3-step easy-to-hard split (`--by margin`), and
each pass's pairs/s, real tokens/s and % of its roofline (2 x parameters FLOPs per real token
against `--peak-fp32` / `--peak-bf16` GFLOP/s). Writes benchmarks/results/rank_bf16.{json,md}.

Resumable: the scored files live in `--work` (default $SDPO_KIT_CACHE/benchmarks/rank_bf16) and
every pair goes through the pair cache, so a rerun scores only what is missing. Speed is taken
only from a pass that started with none of its pairs cached (`timing_*.json` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "alpaca_eval_pairs.parquet"
RESULTS = Path(__file__).resolve().parent / "results"
CLI_BUDGET = 4096  # `sdpo curate score`'s token_budget (ScoreFileConfig.cli_defaults)


def sample(work: Path, pairs: int, seed: int) -> Path:
    """The input file: `pairs` rows drawn with `seed` from the shipped AlpacaEval pairs (kept in file order)."""
    import polars as pl

    path = work / f"pairs_{pairs}_seed{seed}.parquet"
    if not path.exists():
        df = pl.read_parquet(DATA).with_row_index("__i").sample(pairs, seed=seed).sort("__i").drop("__i")
        work.mkdir(parents=True, exist_ok=True)
        df.write_parquet(path)
    return path


def cache_is_cold(config, model_name: str) -> bool:
    """True when the pair cache holds nothing for `model_name` under `config` (a timing is clean)."""
    from sdpo_kit.models import cache_dir, load_model
    from sdpo_kit.scoring.cache import cache_key
    from sdpo_kit.scoring.frame import provenance

    model, tok = load_model(model_name, config.dtype)
    folder = cache_dir() / "scores" / cache_key(provenance(model, tok, config))
    return not any(folder.glob("*.parquet"))


def score(data: Path, work: Path, dtype: str, length: int, model: str) -> tuple[Path, dict | None]:
    """(scored file, timing of a cold pass or None) for one precision and length."""
    from sdpo_kit.scoring.files import ScoreFileConfig, score_file
    from sdpo_kit.scoring.frame import ScoreConfig

    config = ScoreConfig(max_length=length, dtype=dtype, token_budget=CLI_BUDGET)
    out, timing_path = work / f"scored_{dtype}_{length}.parquet", work / f"timing_{dtype}_{length}.json"
    cold = not out.exists() and cache_is_cold(config, model)
    began = time.perf_counter()
    score_file(ScoreFileConfig(data=str(data), out=str(out), model=model), config, progress=False)
    seconds = time.perf_counter() - began
    if cold:
        timing_path.write_text(json.dumps({"seconds": seconds, "load": os.getloadavg()}))
    return out, json.loads(timing_path.read_text()) if timing_path.exists() else None


def steps_of(frame, steps: int):
    """Step (1 = easiest) of each pair under `sdpo curate split --strategy easy-to-hard --by margin`."""
    import polars as pl

    from sdpo_kit.curate.strategies import ROW, SplitConfig, assign_steps

    out = assign_steps(frame.with_row_index(ROW).with_columns(pl.col(ROW).cast(pl.Int64)),
                       SplitConfig(strategy="easy-to-hard", steps=steps))
    return out["step"].to_numpy()


def compare(fp32, bf16, steps: int) -> dict:
    """Agreement of the bf16 pass with the fp32 one on the pairs both kept."""
    import numpy as np

    from sdpo_kit.length import length_key
    from sdpo_kit.stats import spearman

    both = fp32.join(bf16.select("pair_id", "margin"), on="pair_id", suffix="_bf16", maintain_order="left")
    a, b = both["margin"].to_numpy(), both["margin_bf16"].to_numpy()
    low = both.with_columns(both["margin_bf16"].alias("margin"))
    lc_a, lc_b = length_key(both, "margin")[0], length_key(low, "margin")[0]
    delta = np.abs(a - b)
    return {"pairs": both.height, "spearman_margin": spearman(a, b), "spearman_lc": spearman(lc_a, lc_b),
            "sign_agreement": float(np.mean(np.sign(a) == np.sign(b))),
            "max_abs_delta_margin": float(delta.max()), "mean_abs_delta_margin": float(delta.mean()),
            "step_changed": float(np.mean(steps_of(both, steps) != steps_of(low, steps)))}


def speed(scored, timing: dict | None, length: int, params: int, peak: float) -> dict:
    """pairs/s, real tokens/s and % of roofline of a cold pass (None without one)."""
    import polars as pl

    real = scored.select((pl.min_horizontal(pl.col("prompt_tokens") + pl.col("chosen_tokens"), pl.lit(length))
                          + pl.min_horizontal(pl.col("prompt_tokens") + pl.col("rejected_tokens"), pl.lit(length)))
                         .sum()).item()
    if timing is None:
        return {"real_tokens": real, "seconds": None}
    s = timing["seconds"]
    return {"real_tokens": real, "seconds": s, "pairs_per_s": scored.height / s, "real_tok_per_s": real / s,
            "roofline": 2 * params * real / s / 1e9 / peak, "load_during": timing["load"]}


def markdown(record: dict) -> str:
    a = record["args"]
    lines = [f"`python benchmarks/rank_bf16.py --pairs {a['pairs']} --lengths {a['lengths']}`", "",
             f"{a['pairs']} AlpacaEval pairs (seed {a['seed']}), model {a.get('model', 'default')}, `sdpo curate score` engine "
             f"(token_budget {CLI_BUDGET}), bf16 vs fp32; roofline {a['peak_fp32']:.0f} / {a['peak_bf16']:.0f} GFLOP/s",
             "", "| max_length | pairs | ρ margin | ρ `_lc` | sign agreement | max \\|Δ margin\\| | mean \\|Δ margin\\| "
             f"| step changed ({a['steps']} steps) | fp32 pairs/s (% roofline) | bf16 pairs/s (% roofline) | bf16 speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in record["lengths"]:
        c, f, b = r["compare"], r["fp32"], r["bf16"]
        rate = lambda s: f"{s['pairs_per_s']:.3f} ({s['roofline']:.1%})" if s["seconds"] else "cached"  # noqa: E731
        up = f"x{f['seconds'] / b['seconds']:.2f}" if f["seconds"] and b["seconds"] else "-"
        lines.append(f"| {r['max_length']} | {c['pairs']} | {c['spearman_margin']:.4f} | {c['spearman_lc']:.4f} | "
                     f"{c['sign_agreement']:.1%} | {c['max_abs_delta_margin']:.3f} | {c['mean_abs_delta_margin']:.3f} | "
                     f"{c['step_changed']:.1%} | {rate(f)} | {rate(b)} | {up} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--lengths", default="256,1024", help="comma-separated max_length values")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3, help="steps of the easy-to-hard split compared")
    p.add_argument("--peak-fp32", dest="peak_fp32", type=float, default=190.0)
    p.add_argument("--peak-bf16", dest="peak_bf16", type=float, default=410.0)
    p.add_argument("--model", default="default", help="`default` (SmolLM2-135M-Instruct) or a model folder")
    p.add_argument("--work", default=None, help="scored files (default $SDPO_KIT_CACHE/benchmarks/rank_bf16)")
    p.add_argument("--out", default=str(RESULTS / "rank_bf16"), help="writes OUT.json and OUT.md")
    a = p.parse_args()

    import polars as pl

    from sdpo_kit.models import cache_dir, load_model

    work = Path(a.work) if a.work else cache_dir() / "benchmarks" / "rank_bf16"
    data = sample(work, a.pairs, a.seed)
    params = sum(t.numel() for t in load_model(a.model)[0].parameters())
    record = {"args": vars(a), "load_before": os.getloadavg(), "params": params, "lengths": []}
    for length in [int(x) for x in a.lengths.split(",")]:
        row = {"max_length": length}
        frames = {}
        for dtype, peak in (("float32", a.peak_fp32), ("bfloat16", a.peak_bf16)):
            path, timing = score(data, work, dtype, length, a.model)
            frames[dtype] = pl.read_parquet(path)
            row["fp32" if dtype == "float32" else "bf16"] = speed(frames[dtype], timing, length, params, peak)
        row["compare"] = compare(frames["float32"], frames["bfloat16"], a.steps)
        record["lengths"].append(row)
        print(json.dumps(row), flush=True)
    record["load_after"] = os.getloadavg()
    md = markdown(record)
    print(md)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".json").write_text(json.dumps(record, indent=1))
    Path(a.out + ".md").write_text(md)
    print(f"wrote {a.out}.json and {a.out}.md")


if __name__ == "__main__":
    main()
