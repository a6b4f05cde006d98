"""Selection experiment (issue 20): does leaving out the hardest pairs help, and which signal picks them?

    python analysis/reproduce_select.py --budget select > analysis/results/select/run.log 2>&1

Same rules as the factorial experiment (`analysis/reproduce_sdpo.py`, whose stages this reuses): split
by prompt, hyper-parameters from analysis/configs/common.yaml (learning rate picked on the validation
slice), several seeds, held-out pairs never trained or tuned on, behaviour evaluation, bootstrap
intervals over seeds and held-out prompts. Stages, each resumable (rerun the same command):
1. data: reproduce_sdpo's train / validation / held-out samples; S scores the training pairs.
2. crossfit: `sdpo curate crossfit` on the training pairs (folds x seeds of the budget) ->
   ROOT/data/train_difficulty.parquet, plus columns random_<seed> (seeded uniform keys) so the
   random-subset control is `--keep_easiest q --by random_<seed>` like the others.
3. per arm (analysis/configs/select/*.yaml) and seed: partitions (`sdpo curate split`'s library call
   on train_difficulty.parquet), `sdpo train`, `sdpo eval` (+ --generate).
4. results (`--results-only` rewrites them from the runs): table.md (reproduce_sdpo's tables, the
   selection comparisons, answer lengths, per-source kept shares, the cross-fit seed agreement),
   results.json, `sdpo report` of every run.
`--budget smoke --model TINY_MODEL_DIR --root DIR` runs it all on a tiny model in minutes (the test).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

import reproduce_sdpo as base  # noqa: E402  (puts the repository and analysis/ on sys.path)
from compare import comparison_markdown, length_markdown  # noqa: E402
from sdpo_kit.io import read_json, write_json, write_parquet, write_text  # noqa: E402

HERE = base.HERE
CONFIGS = HERE / "configs" / "select"
# (arm, baseline): the questions, each varying one thing.
COMPARISONS = [("dpo-easiest-q-val_loss", "dpo-random-q"),      # 1. dropping the hardest vs a random subset
               ("dpo-easiest-q-margin_lc", "dpo-random-q"),
               ("dpo-easiest-q-val_loss", "dpo-easiest-q-margin_lc"),  # 2. cross-fitted signal vs γ_ref
               ("sdpo-e2h-val_loss", "dpo"),                    # 3. ordering by learning difficulty
               ("dpo-random-q", "dpo"), ("dpo-easiest-q-val_loss", "dpo"), ("dpo-easiest-q-margin_lc", "dpo")]
log = base.log


def load(budget_name: str) -> tuple[dict, dict, dict]:
    """(common: the analysis' shared settings + q, budget, arms) with every arm's split checked."""
    common = yaml.safe_load((HERE / "configs" / "common.yaml").read_text())
    select = yaml.safe_load((CONFIGS / "common.yaml").read_text())
    if budget_name not in select["budgets"]:
        raise SystemExit(f"--budget {budget_name!r}: expected one of {sorted(select['budgets'])}")
    arms = {p.stem: yaml.safe_load(p.read_text()) for p in sorted(CONFIGS.glob("*.yaml")) if p.stem != "common"}
    for name, arm in arms.items():
        base.check_split(f"select/{name}", {"split": split_options(arm, select["q"], 0)})
    budget = select["budgets"][budget_name]
    # A budget may override training keys (select: bf16 autocast, issue 23's exact-reference trainer).
    train = {**common["train"], **budget.get("train", {})}
    return {**common, "train": train, "q": select["q"]}, budget, arms


def split_options(arm: dict, q: float, seed: int) -> dict:
    """The arm's `sdpo curate split` options with q and the seed filled in."""
    opts = dict(arm["split"])
    if opts.get("keep_easiest") == "q":
        opts["keep_easiest"] = q
    if isinstance(opts.get("by"), str):
        opts["by"] = opts["by"].format(seed=seed)
    return opts


def crossfit(common: dict, budget: dict, model: str, data_dir: Path, seeds: list[int]) -> Path:
    """`sdpo curate crossfit` of the scored training pairs (resumable), then the random_<seed> keys."""
    import numpy as np
    import polars as pl

    from sdpo_kit.cli import app
    from sdpo_kit.io import read_parquet_checked, read_parquet_metadata

    out = data_dir / "train_difficulty.parquet"
    keyed = data_dir / "train_selection.parquet"
    if keyed.is_file():
        return keyed
    argv = ["curate", "crossfit", str(data_dir / "train_scored.parquet"), "--out", str(out), "--model", str(model),
            "--folds", str(budget["crossfit"]["folds"]), "--seeds", str(budget["crossfit"]["seeds"]),
            "--max_length", str(budget["max_length"]),
            "--per_device_train_batch_size", str(budget["per_device_train_batch_size"]), "--seed", "0"]
    for k, v in common["train"].items():
        argv += [f"--{k}", str(v)]
    log(f"crossfit: sdpo {' '.join(argv)}")
    began = time.time()
    app(argv, standalone_mode=False)
    log(f"crossfit: {time.time() - began:.0f} s")
    frame = read_parquet_checked(out)
    keys = {f"random_{s}": np.random.default_rng(1000 + s).random(frame.height) for s in seeds}
    write_parquet(keyed, frame.with_columns(pl.Series(k, v) for k, v in keys.items()),
                  metadata=read_parquet_metadata(out))
    return keyed


def write_partitions(name: str, arm: dict, seed: int, q: float, difficulty: Path, root: Path) -> Path:
    """ROOT/partitions/<label>-seed<seed>, where reproduce_sdpo's run_arm_seed finds (and keeps) them."""
    from sdpo_kit.curate.split import split_file
    from sdpo_kit.curate.strategies import SplitConfig

    out = root / "partitions" / f"{arm['label']}-seed{seed}"
    if not (out / "manifest.json").is_file():
        split_file(difficulty, out, SplitConfig(**split_options(arm, q, seed), seed=seed), overwrite=True)
    return out


def selection_markdown(run_dirs: list[Path], root: Path, difficulty: Path | None) -> str:
    """Per arm (seed 0's partitions): pairs kept per source; then the cross-fit agreement between seeds."""
    from sdpo_kit.io import read_json_meta

    out = ["Pairs kept per source (partitions of the first seed; `sdpo curate split` manifest `selection`).", "",
           "| arm | kept / in per source | drop share | warning |", "|---|---|---|---|"]
    seen = set()
    for d in sorted(run_dirs):
        label = read_json(d / "run.json")["label"]
        parts = root / "partitions" / d.name
        if label in seen or not (parts / "manifest.json").is_file():
            continue
        seen.add(label)
        sel = read_json(parts / "manifest.json").get("selection") or {}
        cells = ", ".join(f"{s} {r['kept']}/{r['in']}" for s, r in sel.get("sources", {}).items())
        out.append(f"| {label} | {cells} | {sel.get('drop_share', 0):.1%} | {sel.get('warning') or '-'} |")
    if difficulty is not None and difficulty.is_file():
        record = read_json_meta(difficulty, "sdpo_kit.crossfit") or {}
        rhos = [a["spearman"] for a in record.get("agreement", []) if a["spearman"] is not None]
        out += ["", f"Cross-fitting: {record.get('seeds')} seeds x {record.get('folds')} folds over "
                f"{sum(r['scored_pairs'] for r in record.get('runs', [])) // max(record.get('seeds', 1), 1)} training "
                "pairs; Spearman ρ of val_loss between seeds: "
                + (", ".join(f"{a['seeds'][0]} vs {a['seeds'][1]} {a['spearman']:+.3f}" for a in record["agreement"]
                             if a["spearman"] is not None) or "undefined")
                + (f" (mean {sum(rhos) / len(rhos):+.3f})" if rhos else "") + ".",
                "", agreement_intervals(difficulty, record.get("seeds") or 0)]
    return "\n".join(out) + "\n"


def agreement_intervals(difficulty: Path, seeds: int) -> str:
    """Each seed pair's Spearman ρ of the per-seed val_loss with a 95 % interval over training prompts."""
    import numpy as np
    import polars as pl

    from sdpo_kit.scoring.dpo import sigmoid_loss
    from sdpo_kit.stats import spearman_interval

    frame = pl.read_parquet(difficulty, columns=["prompt", "crossfit_margins"])
    margins = np.array([[np.nan if v is None else v for v in row] for row in frame["crossfit_margins"].to_list()])
    if seeds < 2 or margins.ndim != 2 or margins.shape[1] != seeds:
        return ""
    loss = sigmoid_loss(margins)
    rows = []
    for a in range(seeds):
        for b in range(a + 1, seeds):
            r = spearman_interval(loss[:, a], loss[:, b], clusters=frame["prompt"].hash().to_numpy())
            if r is not None:
                rows.append(f"| {a} vs {b} | {r['rho']:+.3f} | [{r['lo']:+.3f}, {r['hi']:+.3f}] | {r['clusters']} |")
    head = ["Seed agreement of the cross-fitted val_loss: 95 % interval from 2,000 resamples of the training "
            "prompts (a prompt's pairs move together).", "", "| seeds | Spearman ρ | 95 % interval | prompts |",
            "|---|---|---|---|"]
    return "\n".join(head + rows) if rows else ""


def write_results(run_dirs: list[Path], results: Path, info: dict, budget_name: str, root: Path, q: float) -> None:
    from sdpo_kit.report.html import ReportConfig, write_report

    evaluated = [d for d in run_dirs if (d / "eval" / "eval.json").is_file()]
    if not evaluated:
        return
    rows = [base.run_numbers(d) for d in evaluated]
    difficulty = root / "data" / "train_difficulty.parquet"
    write_json(results / "results.json", {"budget": budget_name, "q": q, "data": info, "runs": rows})
    write_text(results / "table.md", f"Kept share q = {q}.\n\n" + base.table_markdown(rows) + "\n"
               + comparison_markdown(evaluated, comparisons=COMPARISONS) + "\n" + length_markdown(evaluated)
               + "\n" + selection_markdown(evaluated, root, difficulty))
    _copy_run_files(evaluated, results)
    write_report(ReportConfig([str(d) for d in evaluated], str(results / "report")))
    log(f"results: {results / 'table.md'}, {results / 'report' / 'report.html'}")


def _copy_run_files(run_dirs: list[Path], results: Path) -> None:
    import shutil

    for d in run_dirs:  # the small files of every run, for checking a rerun against
        for f in ["run.json", "config.yaml", "eval/eval.json", "eval/generations.jsonl",
                  *[f"{s['dir']}/summary.json" for s in read_json(d / "run.json")["steps"]]]:
            if (d / f).is_file():
                (results / "runs" / d.name / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(d / f, results / "runs" / d.name / f)


def select_arms(arms: dict, spec: str) -> dict:
    """The arms `--arms` names, in its order: yaml stems (dpo_easiest_q_val_loss) or the labels their run
    folders carry (dpo-easiest-q-val_loss); an unknown one stops with both lists."""
    by_label = {arm["label"]: name for name, arm in arms.items()}
    wanted = [by_label.get(a.strip(), a.strip()) for a in spec.split(",") if a.strip()]
    unknown = sorted(set(wanted) - set(arms))
    if unknown:
        raise SystemExit(f"--arms {unknown}: no analysis/configs/select/<arm>.yaml; have {sorted(arms)} "
                         f"(or their labels {sorted(by_label)})")
    return {a: arms[a] for a in wanted}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--budget", default="select", help="smoke | select (sizes in analysis/configs/select/common.yaml).")
    p.add_argument("--model", default=None, help="S: `default` or a model folder (default: common.yaml's).")
    p.add_argument("--arms", default=None, help="Comma list of analysis/configs/select/ names or their run labels "
                   "(default: all).")
    p.add_argument("--seeds", default=None, help="Comma list of training seeds (default: the budget's).")
    p.add_argument("--root", default=None, help="Folder for data, partitions, runs (weights); default analysis/runs/BUDGET.")
    p.add_argument("--results", default=None, help="Results folder; default analysis/results/select (select) else ROOT/results.")
    p.add_argument("--results-only", action="store_true", help="Train nothing: rewrite the results of the evaluated runs.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.time()
    common, budget, arms = load(args.budget)
    if args.arms:
        arms = select_arms(arms, args.arms)
    model = args.model or common["model"]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else budget["seeds"]
    root = Path(args.root or HERE / "runs" / args.budget)
    results = Path(args.results or (HERE / "results" / "select" if args.budget == "select" else root / "results"))
    log(f"budget {args.budget}: {budget}; q {common['q']}; model {model}; arms {list(arms)}; seeds {seeds}; root {root}")
    info = base.prepare_data(common, budget, model, root / "data")
    run_dirs = [root / "runs" / f"{arm['label']}-seed{seed}" for seed in seeds for arm in arms.values()]
    if not args.results_only:
        difficulty = crossfit(common, budget, model, root / "data", seeds)
        heldout = root / "data" / "heldout.parquet"
        for seed in seeds:  # seed-major: an interrupted experiment has every arm at the seeds it finished
            for name, arm in arms.items():
                write_partitions(name, arm, seed, common["q"], difficulty, root)
                base.run_arm_seed(name, arm, seed, common, budget, model, root, info, heldout)
    write_results(run_dirs, results, info, args.budget, root, common["q"])
    log(f"done in {time.time() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
