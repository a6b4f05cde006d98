"""Reproduce the sDPO paper's comparison on SmolLM2-135M: DPO vs three sDPO splits, seeds, held-out eval.

    python analysis/reproduce_sdpo.py --budget small > analysis/results/run.log 2>&1

Stages, each resumable (a finished file is never recomputed):
1. data: AlpacaEval pairs split BY PROMPT (data_seed) into train / validation / held-out; pairs
   sampled from each side; S scores the training pairs once (curation margins γ_ref).
2. per arm (analysis/configs/*.yaml except common.yaml) and seed: `sdpo curate split`'s library
   call writes the partitions, `sdpo train` (in-process) trains, `sdpo eval` scores S, M1, ...
   on the held-out pairs. A run whose run.json says "done" is skipped.
3. results: table.md (mean ± sd over seeds, then arm-vs-arm differences with a bootstrap over seeds
   and held-out prompts: analysis/compare.py), results.json, the `sdpo report` of every run.

`--tune-lr 1e-5,5e-5` first trains the DPO arm (seed 0) once per learning rate and scores it on
the validation slice (never the held-out pairs), picks one, and runs the experiment with it.
Weights live under --root (default analysis/runs/, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from sdpo_kit.io import read_json, write_json, write_parquet, write_text  # noqa: E402
from sdpo_kit.runs import read_step_summary  # noqa: E402

sys.path.insert(0, str(HERE))
from compare import comparison_markdown, length_markdown  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_configs(budget: str, arms: list[str] | None) -> tuple[dict, dict]:
    common = yaml.safe_load((HERE / "configs" / "common.yaml").read_text())
    if budget not in common["budgets"]:
        raise SystemExit(f"--budget {budget!r}: expected one of {sorted(common['budgets'])}")
    found = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((HERE / "configs").glob("*.yaml")) if p.stem != "common"}
    wanted = arms or common["budgets"][budget].get("arms") or list(found)
    unknown = [a for a in wanted if a not in found]
    if unknown:
        raise SystemExit(f"--arms {unknown}: no analysis/configs/<arm>.yaml; have {sorted(found)}")
    for a in wanted:
        check_split(a, found[a])
    return common, {a: found[a] for a in wanted}


def check_split(name: str, arm: dict) -> None:
    """Every arm's split options must be known to this sdpo_kit before anything trains (one line if not)."""
    from sdpo_kit.curate.split import SplitConfig

    try:
        SplitConfig(**arm["split"], seed=0)
    except TypeError as err:
        raise SystemExit(f"analysis/configs/{name}.yaml: split {arm['split']} is not supported by this sdpo_kit "
                         f"({err}); `control_length` comes with `sdpo curate split --control_length` (issue 12)") from None


# ---------------------------------------------------------------- 1. data

def _prompt_text(pairs):
    from sdpo_kit.data import prompt_text

    return pairs.with_columns(prompt_text().alias("__prompt"))


def split_prompts(pairs, common: dict, seed: int) -> dict[str, list[str]]:
    """Distinct prompts shuffled with `seed`: first heldout share, then validation share, rest train.

    The split itself is `sdpo data split`'s (`sdpo_kit.curate.heldout.assign_sides`), so the analysis
    and the CLI give the same sides for the same shares and seed.
    """
    from sdpo_kit.curate.heldout import assign_sides

    sides = assign_sides(_prompt_text(pairs)["__prompt"].to_list(), common["heldout_prompt_share"],
                         common["val_prompt_share"], seed)
    return {"heldout": sides["heldout"], "val": sides["validation"], "train": sides["train"]}


def sample_side(pairs, prompts: list[str], side: str, n: int, limit: int, seed: int, data_dir: Path) -> dict:
    """Write `side`.parquet: n pairs drawn (seeded) among the side's pairs whose prompt fits `limit` tokens.

    The held-out pairs are the first n of one seeded order of the pool, so a smaller held-out
    budget is a subset of a larger one.
    """
    import polars as pl

    pool = pairs.filter(pl.col("__prompt").is_in(prompts))
    fits = pool.filter(pl.col("__ptok") <= limit)
    if side == "heldout":
        sample = fits.sample(fraction=1.0, seed=seed, shuffle=True).head(n)
    else:
        sample = fits.sample(min(n, fits.height), seed=seed, shuffle=True)
    write_parquet(data_dir / f"{side}.parquet", sample.drop("__prompt", "__ptok"))
    return {"prompts": len(prompts), "pool_pairs": pool.height, "dropped_prompt_too_long": pool.height - fits.height,
            "pairs": sample.height, "sampled_prompts": sample["__prompt"].n_unique(),
            "sources": dict(sorted(sample["source"].value_counts().iter_rows()))}


def prepare_data(common: dict, budget: dict, model: str, data_dir: Path) -> dict:
    """train/val/heldout parquet files of canonical pairs plus S-scored training pairs; data.json."""
    if (data_dir / "data.json").is_file():
        info = read_json(data_dir / "data.json")
        wanted = {k: budget[k] for k in ("train_pairs", "val_pairs", "heldout_pairs", "max_length")}
        if info.get("budget") != wanted or info.get("model") != str(model):
            raise SystemExit(f"{data_dir} holds data for {info.get('budget')}, model {info.get('model')}; "
                             f"this call wants {wanted}, model {model}: use another --root or delete it.")
        return info
    import polars as pl

    from sdpo_kit.data import load_pairs
    from sdpo_kit.models import load_model
    from sdpo_kit.scoring.frame import ScoreConfig, provenance
    from sdpo_kit.scoring.cache import score_frame_cached

    began = time.time()
    data = str((REPO / common["data"]).resolve()) if not Path(common["data"]).is_absolute() else common["data"]
    loaded = load_pairs(data)
    pairs = _prompt_text(loaded.pairs)
    sides = split_prompts(pairs, common, common["data_seed"])
    lm, tok = load_model(model)
    # Prompt length filter, counted: TRL drops a pair whose prompt fills max_length; we also want
    # room for the answers, so a prompt may take at most prompt_max_share of the window.
    limit = int(budget["max_length"] * common["prompt_max_share"])
    lengths = {p: len(tok.apply_chat_template([{"role": "user", "content": p}], tokenize=True, return_dict=True,
                                              add_generation_prompt=True)["input_ids"])
               for p in pairs["__prompt"].unique().to_list()}
    pairs = pairs.with_columns(pl.col("__prompt").replace_strict(lengths, return_dtype=pl.Int64).alias("__ptok"))
    info = {"input": data, "model": str(model),
            "budget": {k: budget[k] for k in ("train_pairs", "val_pairs", "heldout_pairs", "max_length")},
            "rows": loaded.rows, "loaded": pairs.height, "load_rejects": loaded.reasons,
            "prompt_token_limit": limit, "max_length": budget["max_length"], "data_seed": common["data_seed"], "sides": {}}
    for i, (side, n) in enumerate([("train", budget["train_pairs"]), ("val", budget["val_pairs"]),
                                   ("heldout", budget["heldout_pairs"])]):
        info["sides"][side] = sample_side(pairs, sides[side], side, n, limit, common["data_seed"] + i, data_dir)
    overlap = set(sides["train"]) & set(sides["heldout"]) | set(sides["val"]) & set(sides["heldout"])
    assert not overlap and not set(sides["train"]) & set(sides["val"]), "prompt split leaked"
    train = pl.read_parquet(data_dir / "train.parquet")
    cfg = ScoreConfig(max_length=budget["max_length"], truncation_mode="keep_start", dtype="float32")
    # Through the pair cache: every run's step 1 (reference S, same settings) then reads these rows.
    scored, rejects = score_frame_cached(train, lm, tok, cfg, file=str(data_dir / "train.parquet"))
    meta = provenance(lm, tok, cfg)
    fp = meta["fingerprint"]
    write_parquet(data_dir / "train_scored.parquet", scored, metadata={"sdpo_kit.scorer": json.dumps(meta)})
    info.update(base_fingerprint=fp, train_score_rejects=len(rejects), seconds=round(time.time() - began, 1),
                train_truncated={"chosen": int(scored["chosen_truncated"].sum()),
                                 "rejected": int(scored["rejected_truncated"].sum()), "pairs": scored.height},
                train_gamma_S={"mean": float(scored["margin"].mean()), "accuracy": float((scored["margin"] > 0).mean())})
    write_json(data_dir / "data.json", info)
    log(f"data: {json.dumps(info['sides'])}  ({info['seconds']} s)")
    return info


# ---------------------------------------------------------------- 2. runs

def write_partitions(arm: dict, seed: int, data_dir: Path, out: Path) -> Path:
    from sdpo_kit.curate.split import SplitConfig, split_file

    if not (out / "manifest.json").is_file():
        split_file(data_dir / "train_scored.parquet", out, SplitConfig(**arm["split"], seed=seed), overwrite=True)
    return out


def train_argv(arm: dict, common: dict, budget: dict, model: str, parts: Path, run_dir: Path, seed: int,
               overrides: dict | None = None) -> list[str]:
    hp = {**common["train"], **arm.get("train", {}), **(overrides or {}),
          "max_length": budget["max_length"], "per_device_train_batch_size": budget["per_device_train_batch_size"],
          "seed": seed}
    argv = ["train", "--partitions", str(parts), "--out", str(run_dir), "--model", str(model), "--mode", arm["mode"]]
    for k, v in hp.items():
        argv += [f"--{k}", str(v)]
    return argv


def run_arm_seed(name: str, arm: dict, seed: int, common: dict, budget: dict, model: str, root: Path,
                 info: dict, heldout: Path, overrides: dict | None = None, run_name: str | None = None) -> Path:
    """Train (unless done) and evaluate (cached per model) one arm with one seed; returns the run dir."""
    from sdpo_kit.cli import app

    run_dir = root / "runs" / (run_name or f"{arm['label']}-seed{seed}")
    # `partitions_of`: an arm that varies only the training (e.g. the reference schedule) shares another arm's partitions.
    parts_label = arm.get("partitions_of", arm["label"])
    parts = write_partitions(arm, seed, root / "data", root / "partitions" / f"{parts_label}-seed{seed}")
    meta = read_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else None
    argv = train_argv(arm, common, budget, model, parts, run_dir, seed, overrides)
    if meta and meta.get("analysis_argv", argv) != argv:
        raise SystemExit(f"{run_dir} was trained with other settings ({meta['analysis_argv']}); delete it to retrain.")
    if meta and meta.get("status") == "done":
        log(f"{run_dir.name}: trained already, skipping training")
    else:
        log(f"{run_dir.name}: sdpo {' '.join(argv)}")
        began = time.time()
        app(argv + (["--resume"] if meta else []), standalone_mode=False)
        log(f"{run_dir.name}: trained in {time.time() - began:.0f} s")
    # The trainer's run.json has no label/seed fields to set: add them for `sdpo report`.
    meta = read_json(run_dir / "run.json")
    meta.update(label=arm["label"], seed=seed, arm=name, analysis_argv=argv)
    write_json(run_dir / "run.json", meta)
    # Intermediate models (M1, M2: the paper's Figure 2) are scored for the budget's
    # `all_models_seeds` only; every seed scores S and its final model.
    steps = len(meta["steps"])
    models = "all" if seed in budget.get("all_models_seeds", [seed]) or steps == 1 else f"S,M{steps}"
    evaluate_run(run_dir, heldout, models, budget)
    return run_dir


def evaluate_run(run_dir: Path, data: Path, models: str = "all", budget: dict | None = None) -> dict:
    """`sdpo eval` of S, M1, ... (`models`); S's scores come from the scorer's pair cache after the first run."""
    from sdpo_kit.report.evaluate import EvalConfig, evaluate

    out = run_dir / "eval" if data.stem == "heldout" else run_dir / f"eval_{data.stem}"
    n_models = 1 + len(read_json(run_dir / "run.json")["steps"]) if models == "all" else len(models.split(","))
    # Behaviour (answers) on held-out prompts only, never on the validation slice.
    generate = (budget or {}).get("generate", 0) if data.stem == "heldout" else 0
    if (out / "eval.json").is_file() and len(read_json(out / "eval.json")["models"]) == n_models and (
            not generate or "behaviour" in read_json(out / "eval.json")):
        return read_json(out / "eval.json")
    began = time.time()
    result = evaluate(EvalConfig(run=str(run_dir), data=str(data), out=str(out), models=models, generate=generate,
                                 max_new_tokens=(budget or {}).get("max_new_tokens", 64)))
    write_json(out / "seconds.json", {"seconds": round(time.time() - began, 1)})
    log(f"{run_dir.name}: evaluated on {data.name} in {time.time() - began:.0f} s: "
        + ", ".join(f"{m['name']} acc {m['accuracy']:.3f} γ {m['mean_margin']:+.2f}" for m in result["models"]))
    return result


# ---------------------------------------------------------------- 3. results

def run_numbers(run_dir: Path) -> dict:
    """The numbers one run contributes to the table (final model M_T against S)."""
    meta, ev = read_json(run_dir / "run.json"), read_json(run_dir / "eval" / "eval.json")
    final = ev["models"][-1]
    vs_s = next(c for c in ev["comparisons"] if c["policy"] == final["name"] and c["reference"] == "S")
    summaries = [read_step_summary(run_dir / s["dir"]) for s in meta["steps"]]
    return {
        "run": run_dir.name, "label": meta["label"], "seed": meta["seed"], "final": final["name"],
        "heldout_pairs": ev["data"]["pairs"], "S_accuracy": ev["models"][0]["accuracy"],
        "S_mean_gamma": ev["models"][0]["mean_margin"], "accuracy": final["accuracy"],
        "mean_gamma": final["mean_margin"], "reward_accuracy_vs_S": vs_s["reward_accuracy"],
        "reward_margin_vs_S": vs_s["reward_margin_mean"],
        "per_source": {k: {"accuracy": v["accuracy"], "pairs": v["pairs"],
                           "reward_accuracy_vs_S": vs_s["per_source"][k]["reward_accuracy"]}
                       for k, v in final["per_source"].items()},
        "S_per_source": {k: v["accuracy"] for k, v in ev["models"][0]["per_source"].items()},
        "model_gamma": {m["name"]: m["mean_margin"] for m in ev["models"]},  # S, M1, ... as evaluated
        "steps": len(summaries), "optimizer_steps": sum(s["optimizer_steps"] for s in summaries),
        "train_pairs": sum(s["pairs"] for s in summaries),
        "train_seconds": round(sum(s["seconds"] for s in summaries), 1),
        "eval_seconds": (read_json(run_dir / "eval" / "seconds.json")["seconds"]
                         if (run_dir / "eval" / "seconds.json").is_file() else None),
        "step_partitions": [{"step": s["step"], "pairs": s["pairs"], "ref_margin_mean": s["ref_margin_mean"],
                             "loss_first": s["loss_first"], "loss_end": s["sigmoid_loss_end"],
                             "reference_fingerprint": s.get("reference_fingerprint"),
                             "reference_exact": s.get("reference_exact")} for s in summaries],
        "reference_schedule": meta.get("reference_schedule"),
        "behaviour": ev.get("behaviour"),
    }


def _ms(values: list[float], fmt: str) -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt.lstrip('+'))}"


def table_markdown(rows: list[dict]) -> str:
    """Mean ± sample standard deviation over seeds, one line per arm (S first)."""
    labels = list(dict.fromkeys(r["label"] for r in rows))
    by = {lab: [r for r in rows if r["label"] == lab] for lab in labels}
    s = rows[0]
    out = [f"Held-out pairs: {s['heldout_pairs']}. Mean ± sd over seeds (n per arm in the `seeds` column).", "",
           "| model | seeds | pref. accuracy (γ>0) | mean γ | reward acc. vs S | reward margin vs S | opt. steps | train s |",
           "|---|---|---|---|---|---|---|---|",
           f"| S (SmolLM2-135M-Instruct) | - | {s['S_accuracy']:.3f} | {s['S_mean_gamma']:+.2f} | - | - | - | - |"]
    for lab, rs in by.items():
        g = lambda k: [r[k] for r in rs]  # noqa: E731
        out.append(f"| {lab} ({rs[0]['final']}) | {len(rs)} | {_ms(g('accuracy'), '.3f')} | {_ms(g('mean_gamma'), '+.2f')} "
                   f"| {_ms(g('reward_accuracy_vs_S'), '.3f')} | {_ms(g('reward_margin_vs_S'), '+.3f')} "
                   f"| {_ms(g('optimizer_steps'), '.0f')} | {_ms(g('train_seconds'), '.0f')} |")
    sources = sorted(s["per_source"])
    out += ["", "Per source: preference accuracy of the final model (reward accuracy vs S in brackets).", "",
            "| model | " + " | ".join(f"{k} (n={s['per_source'][k]['pairs']})" for k in sources) + " |",
            "|---" * (len(sources) + 1) + "|",
            "| S | " + " | ".join(f"{s['S_per_source'][k]:.3f}" for k in sources) + " |"]
    for lab, rs in by.items():
        cells = [f"{_ms([r['per_source'][k]['accuracy'] for r in rs], '.2f')} "
                 f"({_ms([r['per_source'][k]['reward_accuracy_vs_S'] for r in rs], '.2f')})" for k in sources]
        out.append(f"| {lab} | " + " | ".join(cells) + " |")
    out += ["", "Mean γ on the held-out pairs of S and of each step's model M1, M2, M3. Under the stepwise reference "
            "schedule M_{t-1} is step t's reference (the paper's Figure 2); under `fixed` S is every step's reference, "
            "under `mix` a weight average of M_{t-1} and the previous reference.", "",
            "| arm | " + " | ".join(["S", "M1", "M2", "M3"]) + " |", "|---|---|---|---|---|"]
    for lab, rs in by.items():
        rs = [r for r in rs if len(r["model_gamma"]) == r["steps"] + 1]  # runs that scored every M_t
        if rs:
            cells = [_ms([r["model_gamma"][n] for r in rs], "+.2f") if n in rs[0]["model_gamma"] else "-"
                     for n in ["S", "M1", "M2", "M3"]]
            out.append(f"| {lab} (seeds {', '.join(str(r['seed']) for r in rs)}) | " + " | ".join(cells) + " |")
    out += behaviour_markdown(by)
    return "\n".join(out) + "\n"


def behaviour_markdown(by: dict[str, list[dict]]) -> list[str]:
    """Answers of the final model per arm (mean ± sd over seeds), S first: length, cut share, distinct-2, KL."""
    have = {lab: [r for r in rs if r.get("behaviour")] for lab, rs in by.items()}
    have = {lab: rs for lab, rs in have.items() if rs}
    if not have:
        return []
    first = next(iter(have.values()))[0]
    b = first["behaviour"]
    keys = [("mean_tokens", ".1f"), ("cut_share", ".2f"), ("distinct_2", ".3f"), ("kl_vs_S", "+.4f")]
    s = b["models"]["S"]
    out = ["", f"Behaviour: answers to {b['prompts']} held-out prompts ({b['decoding']}, at most {b['max_new_tokens']} "
           "new tokens) of the final model; KL vs S = mean per-token log π − log π_S on the model's own answers.", "",
           "| model | seeds | answer tokens | cut at limit | distinct-2 | KL vs S |", "|---|---|---|---|---|---|",
           "| S | - | " + " | ".join(format(s[k], f) if s[k] is not None else "-" for k, f in keys) + " |"]
    for lab, rs in have.items():
        finals = [r["behaviour"]["models"][r["final"]] for r in rs]
        cells = [_ms([f[k] for f in finals if f[k] is not None], fmt) if any(f[k] is not None for f in finals) else "-"
                 for k, fmt in keys]
        out.append(f"| {lab} ({rs[0]['final']}) | {len(rs)} | " + " | ".join(cells) + " |")
    return out


def write_results(run_dirs: list[Path], results: Path, info: dict, budget_name: str) -> None:
    from sdpo_kit.report.html import ReportConfig, write_report

    rows = [run_numbers(d) for d in run_dirs if (d / "eval" / "eval.json").is_file()]
    if not rows:
        return
    write_json(results / "results.json", {"budget": budget_name, "data": info, "runs": rows})
    evaluated = [d for d in run_dirs if (d / "eval" / "eval.json").is_file()]
    write_text(results / "table.md", table_markdown(rows) + "\n" + comparison_markdown(evaluated)
               + "\n" + length_markdown(evaluated))
    for d in run_dirs:  # the small files of every run, for checking a rerun against
        keep = results / "runs" / d.name
        for f in ["run.json", "config.yaml", "eval/eval.json", "eval/generations.jsonl",
                  *[f"{s['dir']}/summary.json" for s in read_json(d / "run.json")["steps"]]]:
            if (d / f).is_file():
                (keep / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(d / f, keep / f)
    write_report(ReportConfig([str(d) for d in run_dirs], str(results / "report")))
    log(f"results: {results / 'table.md'}, {results / 'report' / 'report.html'}")


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--budget", default="small",
                   help="smoke | small | factorial | full (sizes in analysis/configs/common.yaml).")
    p.add_argument("--model", default=None, help="S: `default` or a model folder (default: common.yaml's).")
    p.add_argument("--arms", default=None, help="Comma list of config names (default: every analysis/configs/*.yaml).")
    p.add_argument("--seeds", default=None, help="Comma list of seeds (default: the budget's).")
    p.add_argument("--root", default=None, help="Folder for data, partitions, runs (weights); default analysis/runs/BUDGET.")
    p.add_argument("--results", default=None, help="Results folder; default analysis/results (small) else ROOT/results.")
    p.add_argument("--tune-lr", default=None, help="Comma list of learning rates: validation checks of the DPO arm.")
    p.add_argument("--bf16", action="store_true",
                   help="Train with `--bf16 true` (issue 23's precision check: the same partitions as the fp32 runs).")
    p.add_argument("--results-only", action="store_true",
                   help="Train nothing: write the results of the runs already evaluated (e.g. an interrupted experiment).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.time()
    common, arms = load_configs(args.budget, args.arms.split(",") if args.arms else None)
    budget = common["budgets"][args.budget]
    if args.bf16:
        common["train"]["bf16"] = True
    model = args.model or common["model"]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else budget["seeds"]
    root = Path(args.root or HERE / "runs" / args.budget)
    results = Path(args.results or (HERE / "results" if args.budget == "small" else root / "results"))
    log(f"budget {args.budget}: {budget}; model {model}; arms {list(arms)}; seeds {seeds}; root {root}")
    info = prepare_data(common, budget, model, root / "data")
    if args.results_only:
        done = [root / "runs" / f"{arm['label']}-seed{seed}" for seed in seeds for arm in arms.values()]
        write_results([d for d in done if (d / "eval" / "eval.json").is_file()], results, info, args.budget)
        return 0
    if args.tune_lr:  # validation checks first; the runs below use the learning rate they pick
        dpo = load_configs(args.budget, ["dpo"])[1]["dpo"]
        common["train"]["learning_rate"] = tune(args.tune_lr, dpo, common, budget, model, root, info, results)
    # Seed-major order: an interrupted experiment still has every arm at the seeds it finished.
    run_dirs = [run_arm_seed(name, arm, seed, common, budget, model, root, info, root / "data" / "heldout.parquet")
                for seed in seeds for name, arm in arms.items()]
    write_results(run_dirs, results, info, args.budget)
    log(f"done in {time.time() - began:.0f} s")
    return 0


def tune(lrs: str, arm: dict, common: dict, budget: dict, model: str, root: Path, info: dict, results: Path) -> float:
    """DPO arm, seed 0, one run per learning rate, scored on the validation slice only.

    Picks the rate with the highest reward accuracy against S on the validation pairs (ties:
    the larger mean reward margin), i.e. the one whose DPO update generalises best to new prompts.
    """
    rows = []
    for lr in lrs.split(","):
        run = run_arm_seed("dpo", arm, 0, common, budget, model, root, info, root / "data" / "val.parquet",
                           overrides={"learning_rate": float(lr)}, run_name=f"tune-dpo-lr{lr}")
        ev = read_json(run / "eval_val" / "eval.json")
        vs_s = ev["comparisons"][-1]
        rows.append({"lr": lr, "learning_rate": float(lr), "val_pairs": ev["data"]["pairs"], "S_accuracy": ev["models"][0]["accuracy"],
                     "accuracy": ev["models"][-1]["accuracy"], "mean_gamma": ev["models"][-1]["mean_margin"],
                     "reward_accuracy_vs_S": vs_s["reward_accuracy"], "reward_margin_vs_S": vs_s["reward_margin_mean"]})
        log(f"tune lr={lr}: {rows[-1]}")
    best = max(rows, key=lambda r: (r["reward_accuracy_vs_S"], r["reward_margin_vs_S"]))
    write_json(results / "validation.json", {"beta": common["train"]["beta"], "checks": rows,
                                             "chosen_learning_rate": best["learning_rate"],
                                             "rule": "max validation reward accuracy vs S, then reward margin"})
    log(f"tune: learning_rate {best['learning_rate']} chosen on the validation slice")
    adopt(root / "runs" / f"tune-dpo-lr{best['lr']}", arm, {**common, "train": {**common["train"], "learning_rate": best[
        "learning_rate"]}}, budget, model, root)
    return best["learning_rate"]


def adopt(src: Path, arm: dict, common: dict, budget: dict, model: str, root: Path) -> None:
    """The chosen validation run IS the DPO arm's seed-0 run (same data, seed and settings, only
    another folder): copy its weights instead of training the same thing twice."""
    dst = root / "runs" / f"{arm['label']}-seed0"
    if dst.exists():
        return
    meta = read_json(src / "run.json")
    argv = train_argv(arm, common, budget, model, root / "partitions" / f"{arm['label']}-seed0", dst, 0)
    if meta["status"] != "done" or [a for a in meta["analysis_argv"] if a != str(src)] != [a for a in argv if a != str(dst)]:
        return
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("eval*"))
    write_json(dst / "run.json", {**meta, "analysis_argv": argv, "adopted_from": src.name})
    log(f"{dst.name}: adopted from {src.name} (identical training settings)")


if __name__ == "__main__":
    raise SystemExit(main())
