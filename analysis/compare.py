"""Arm-vs-arm differences in held-out γ, with a bootstrap over held-out prompts.

    python analysis/compare.py analysis/runs/small/runs/*-seed*   # prints the markdown table

The seeds of the experiment vary training only (batch order, the random split); they say nothing
about how much the *held-out sample* decides a difference between two arms. This bootstraps both:
each draw resamples every arm's seeds and the held-out prompts with replacement (a prompt's pairs
move together: AlpacaEval has several answer pairs per prompt, and they are not independent), and
reports the 95% interval of the difference in mean γ of the final models. The difference in
mean γ times β is the difference in mean implicit-reward margin against S.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

from sdpo_kit.data import prompt_text
from sdpo_kit.stats import paired_bootstrap

# (arm, baseline): every sDPO arm against plain DPO, and the paper's ordered splits against random.
COMPARISONS = [("sdpo-easy-to-hard", "dpo"), ("sdpo-by-source", "dpo"), ("sdpo-random", "dpo"),
               ("sdpo-easy-to-hard", "sdpo-random"), ("sdpo-by-source", "sdpo-random"),
               # issue 13's factorial: the refresh at a fixed order, length control, the soft update
               ("sdpo-random", "sdpo-random-fixed"), ("sdpo-easy-to-hard-lc", "sdpo-easy-to-hard"),
               ("sdpo-easy-to-hard-lc", "sdpo-random"), ("sdpo-random-mix", "sdpo-random"),
               ("sdpo-random-mix", "sdpo-random-fixed"), ("sdpo-random-fixed", "dpo")]


def final_gammas(run_dir: Path) -> pl.DataFrame:
    """pair_id, prompt text and γ of the run's final model on the held-out pairs."""
    final = json.loads((run_dir / "eval" / "eval.json").read_text())["models"][-1]["name"]
    df = pl.read_parquet(run_dir / "eval" / "models" / f"{final}.parquet", columns=["pair_id", "prompt", "margin"])
    return df.select("pair_id", prompt_text().alias("prompt_text"),
                     pl.col("margin").alias("gamma"))


def arm_gammas(run_dirs: list[Path]) -> dict[str, pl.DataFrame]:
    """label -> one row per held-out pair: pair_id, prompt_text, gamma (list: one γ per seed of the arm)."""
    by_label: dict[str, list[pl.DataFrame]] = {}
    for d in sorted(run_dirs):
        label = json.loads((d / "run.json").read_text())["label"]
        by_label.setdefault(label, []).append(final_gammas(d))
    return {lab: pl.concat(frames).group_by("pair_id", "prompt_text", maintain_order=True).agg(pl.col("gamma"))
            for lab, frames in by_label.items()}


def two_level_bootstrap(a: np.ndarray, b: np.ndarray, clusters: np.ndarray, draws: int = 10_000, seed: int = 0) -> dict:
    """Mean over pairs of (a's γ − b's γ), each averaged over seeds, and its 95% percentile interval.

    a: (seeds_a, pairs), b: (seeds_b, pairs) γ of the final models; clusters: (pairs,) prompt labels.
    The interval code is the library's (`sdpo_kit.stats.paired_bootstrap`, also behind `sdpo
    report`'s verdict): each draw resamples each arm's seeds and then the clusters.
    """
    return paired_bootstrap(a, b, clusters, draws=draws, seed=seed)


def comparison_markdown(run_dirs: list[Path], draws: int = 10_000, comparisons=COMPARISONS) -> str:
    """The (arm, baseline) differences of `comparisons` present among the runs, as a markdown table."""
    arms = arm_gammas(run_dirs)
    rows = []
    for arm, base in comparisons:
        if arm not in arms or base not in arms:
            continue
        both = arms[arm].join(arms[base].select("pair_id", pl.col("gamma").alias("base")), on="pair_id", how="inner")
        a, b = (np.array(both[c].to_list(), dtype=float).T for c in ("gamma", "base"))
        r = two_level_bootstrap(a, b, both["prompt_text"].to_numpy(), draws)
        rows.append(f"| {arm} − {base} | {len(a)} vs {len(b)} | {r['pairs']} ({r['clusters']} prompts) "
                    f"| {r['mean']:+.2f} | [{r['lo']:+.2f}, {r['hi']:+.2f}] | {r['p_positive']:.2f} |")
    if not rows:
        return ""
    return "\n".join([
        "Differences in held-out mean γ of the final models, each arm averaged over its seeds (× β = the "
        f"difference in reward margin vs S). 95% interval from {draws:,} draws that resample each arm's seeds "
        "and the held-out prompts (a prompt's pairs move together).", "",
        "| arms | seeds | held-out pairs | Δ mean γ | 95% interval | share of draws > 0 |",
        "|---|---|---|---|---|---|", *rows]) + "\n"


def final_lengths(run_dir: Path) -> dict[str, pl.DataFrame] | None:
    """`sdpo eval --generate` answers of S and of the run's final model: name -> prompt_id, tokens, cut
    (1.0 if the answer reached --max_new_tokens without ending); None if the run generated nothing."""
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    path = run_dir / "eval" / "generations.jsonl"
    if "behaviour" not in ev or not path.is_file():
        return None
    final = ev["models"][-1]["name"]
    rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return {name: pl.DataFrame([{"prompt_id": r["prompt_id"], "tokens": float(r["tokens"]), "cut": float(r["cut"])}
                                for r in rows if r["model"] == model])
            for name, model in (("final", final), ("S", "S"))}


def length_markdown(run_dirs: list[Path], base: str = "dpo", draws: int = 10_000) -> str:
    """Each arm's final answers minus `base`'s, and `base`'s minus S's: mean length (tokens) and share
    cut at the token limit, bootstrapped over seeds and prompts.

    The cut share matters because the mean length is censored: an answer cut at the limit counts as
    the limit, so when most answers are cut a lengthening shows up in the cut share, not the mean.
    """
    by_label: dict[str, list[pl.DataFrame]] = {}
    start = None  # S's greedy answers: the same in every run
    for d in sorted(run_dirs):
        answers = final_lengths(d)
        if answers is not None:
            by_label.setdefault(json.loads((d / "run.json").read_text())["label"], []).append(answers["final"])
            start = answers["S"]
    if base not in by_label or len(by_label) < 2:
        return ""
    per_prompt = lambda fs: pl.concat(fs).group_by("prompt_id", maintain_order=True).agg("tokens", "cut")  # noqa: E731
    arms = {lab: per_prompt(fs) for lab, fs in by_label.items()}
    rows = []
    # Every arm against the baseline, then the baseline against S (a run may be labelled "S" too).
    for arm, ref, a_df, b_df in [(lab, base, df, arms[base]) for lab, df in arms.items() if lab != base] + [
            (base, "S", arms[base], per_prompt([start]))]:
        both = a_df.join(b_df.select("prompt_id", pl.col("tokens").alias("base_tokens"),
                                     pl.col("cut").alias("base_cut")), on="prompt_id")
        cells = []
        for col, fmt in (("tokens", "+.1f"), ("cut", "+.2f")):
            a, b = (np.array(both[c].to_list(), dtype=float).T for c in (col, f"base_{col}"))
            r = two_level_bootstrap(a, b, both["prompt_id"].to_numpy(), draws)
            cells.append(f"{r['mean']:{fmt}} | [{r['lo']:{fmt}}, {r['hi']:{fmt}}] | {r['p_positive']:.2f}")
        rows.append(f"| {arm} − {ref} | {len(a)} vs {len(b)} | {r['pairs']} | " + " | ".join(cells) + " |")
    return "\n".join([
        f"Answer length of the final models against {base} (and {base} against S), on the same held-out prompts "
        f"(`sdpo eval --generate`): mean tokens and share of answers cut at the token limit; 95% interval "
        f"from {draws:,} draws over seeds and prompts.", "",
        "| arms | seeds | prompts | Δ mean tokens | 95% interval | share > 0 | Δ cut share | 95% interval | share > 0 |",
        "|---|---|---|---|---|---|---|---|---|", *rows]) + "\n"


if __name__ == "__main__":
    dirs = [Path(p) for p in sys.argv[1:] if (Path(p) / "eval" / "eval.json").is_file()]
    if not dirs:
        raise SystemExit("usage: python analysis/compare.py RUN_DIR... (each with run.json and eval/eval.json)")
    print(comparison_markdown(dirs))
