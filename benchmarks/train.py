"""Seconds per optimiser step, peak memory, real tokens/s, padding and roofline: sdpo vs TRL, fp32 vs bf16.

    python benchmarks/train.py --pairs 32 --max-length 192 --batch 4     # the four configurations
    python benchmarks/train.py --pairs 4 --configs sdpo-fp32,sdpo-bf16    # smoke

Every configuration trains the default model (SmolLM2-135M-Instruct) for one epoch on the same
real AlpacaEval pairs with the same DPOConfig, in its own process (its peak RSS is its own):
- `sdpo-*`: one stepwise step (T=1) of `sdpo train`: the scorer computes the reference log-probs
  (in the trainer's precision), then a DPOTrainer trains with no reference model;
- `trl-*`: a plain `DPOTrainer(model, args)` that holds a reference model and runs it every step;
- `*-bf16`: `--bf16 true` (float32 master weights, accelerate's bf16 autocast), `*-fp32` plain;
- `*-grouped` (sdpo only): `--train_sampling_strategy group_by_length` (batches of similar length);
- `*-trim` (sdpo only): `--trim_padding true` (each batch's rows in two length groups without their padding;
  the padding column still shows the collator's batches, of which the trimmed forward skips part).
Real tokens are the attention-mask ones of the batches the trainer ran (`training_step`'s inputs),
padding the rest; % of roofline counts 6 x parameters FLOPs per real token (forward + backward of
the policy only) against `--peak-fp32` / `--peak-bf16` GFLOP/s (the 2-core AVX-512 CPU's matmul
rates, `benchmarks/score.py` measures them). Writes benchmarks/results/train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "alpaca_eval_pairs.parquet"
RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = {  # name: (side, precision, extra sdpo/TRL flags)
    "sdpo-fp32": ("sdpo", "fp32", []), "sdpo-bf16": ("sdpo", "bf16", []),
    "trl-fp32": ("trl", "fp32", []), "trl-bf16": ("trl", "bf16", []),
    "sdpo-fp32-grouped": ("sdpo", "fp32", ["--train_sampling_strategy", "group_by_length"]),
    "sdpo-bf16-grouped": ("sdpo", "bf16", ["--train_sampling_strategy", "group_by_length"]),
    "sdpo-fp32-trim": ("sdpo", "fp32", ["--trim_padding", "true"]),
    "sdpo-bf16-trim": ("sdpo", "bf16", ["--trim_padding", "true"]),
}
DEFAULT = "sdpo-fp32,sdpo-bf16,trl-fp32,trl-bf16"


def write_partition(out: Path, pairs: int) -> Path:
    """One partition of `pairs` real pairs in TRL's conversational form."""
    import polars as pl

    df = pl.read_parquet(DATA).filter(pl.col("prompt").str.len_chars() < 300).head(pairs)
    rows = [{"pair_id": str(i), "prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}], "source": r["source"]}
            for i, r in enumerate(df.iter_rows(named=True))]
    out.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(out / "step_1.parquet")
    return out


def dpo_flags(a, precision: str, extra: list[str]) -> list[str]:
    return ["--max_length", str(a.max_length), "--per_device_train_batch_size", str(a.batch),
            "--num_train_epochs", "1", "--learning_rate", "1e-6", "--logging_steps", "1",
            "--report_to", "none", "--save_strategy", "no", "--seed", "0",
            "--bf16", "true" if precision == "bf16" else "false", *extra]


def count_tokens() -> dict:
    """Patch the Trainer's `training_step` to add up the real and padded tokens of every batch it runs."""
    from transformers import Trainer

    counts = {"real": 0, "padded": 0}
    original = Trainer.training_step

    def training_step(self, model, inputs, *args, **kwargs):
        mask = inputs["attention_mask"]
        counts["real"] += int(mask.sum())
        counts["padded"] += mask.numel()
        return original(self, model, inputs, *args, **kwargs)

    Trainer.training_step = training_step
    return counts


def run_sdpo(a, work: Path, flags: list[str]) -> dict:
    from sdpo_kit.training.config import parse_train_args
    from sdpo_kit.training.loop import train_stepwise

    out = work / f"run_{a.worker}"
    cfg, args, over = parse_train_args(["--partitions", str(work / "parts"), "--model", a.model, "--out", str(out),
                                        *flags])
    train_stepwise(cfg, args, over)
    return json.loads((out / "step_1" / "trainer_state.json").read_text())


def run_trl(a, work: Path, flags: list[str]) -> dict:
    import polars as pl
    from datasets import Dataset
    from trl import DPOTrainer

    from sdpo_kit.models import load_model
    from sdpo_kit.training.config import parse_train_args

    _, args, _ = parse_train_args(["--partitions", str(work / "parts"), "--out", "x", *flags])
    args.precompute_ref_log_probs = False  # TRL's default: a live reference model
    args.output_dir = str(work / f"out_{a.worker}")
    model, tokenizer = load_model(a.model)
    frame = pl.read_parquet(work / "parts" / "step_1.parquet").select("prompt", "chosen", "rejected")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(frame.to_dicts()),
                         processing_class=tokenizer)
    assert trainer.ref_model is not None
    trainer.train()
    return {"log_history": trainer.state.log_history, "global_step": trainer.state.global_step}


def worker(a) -> None:
    from sdpo_kit.models import load_model

    side, precision, extra = CONFIGS[a.worker]
    params = sum(p.numel() for p in load_model(a.model)[0].parameters())
    counts = count_tokens()
    began = time.time()
    state = (run_sdpo if side == "sdpo" else run_trl)(a, Path(a.work), dpo_flags(a, precision, extra))
    end = next(e for e in reversed(state["log_history"]) if "train_runtime" in e)
    first = next((e["loss"] for e in state["log_history"] if "loss" in e), None)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "config": a.worker, "side": side, "precision": precision, "wall_s": time.time() - began,
        "train_runtime_s": end["train_runtime"], "steps": state["global_step"], "loss_first": first,
        "peak_rss_mib": usage.ru_maxrss / 1024, "params": params, **{f"{k}_tokens": v for k, v in counts.items()},
        "cpu_s": usage.ru_utime + usage.ru_stime,  # less sensitive than wall time to other users' load
    }))


def figures(r: dict, a) -> dict:
    """Per-step and roofline figures of one worker's record."""
    peak = a.peak_bf16 if r["precision"] == "bf16" else a.peak_fp32
    seconds = r["train_runtime_s"]
    return {"s_per_step": seconds / r["steps"], "wall_per_step": r["wall_s"] / r["steps"],
            "real_tok_s": r["real_tokens"] / seconds,
            "padding": 1 - r["real_tokens"] / r["padded_tokens"],
            "roofline": 6 * r["params"] * r["real_tokens"] / seconds / 1e9 / peak}


NOTE = ("s per optimiser step: the trainer's own `train_runtime` / steps; sdpo's excludes its scoring passes (the "
        "reference before the step, the end-of-step pass after it), TRL's includes its reference model's forward at "
        "every step. Whole run per step: the worker's wall time from before the model is loaded to the end "
        "(sdpo: loading, both scoring passes, training, saving the model; TRL: loading policy and reference, "
        "tokenising, training) / steps. Every worker starts from an empty pair cache (its own SDPO_KIT_CACHE), "
        "so sdpo's reference pass is always paid.")


def table(results: list[dict], a) -> str:
    base = {r["config"]: figures(r, a)["s_per_step"] for r in results}
    wall = {r["config"]: figures(r, a)["wall_per_step"] for r in results}
    lines = ["| configuration | s per optimiser step | vs sdpo fp32 | vs TRL same precision | whole run per step "
             "(vs TRL) | real tokens/s | padding | % of roofline | peak RSS | first loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        f = figures(r, a)
        ratio = lambda name: f"x{f['s_per_step'] / base[name]:.2f}" if name in base else "-"  # noqa: E731
        peak = a.peak_bf16 if r["precision"] == "bf16" else a.peak_fp32
        lines.append(f"| {r['config']} | {f['s_per_step']:.2f} s | {ratio('sdpo-fp32')} | "
                     f"{ratio('trl-' + r['precision']) if r['side'] == 'sdpo' else '-'} | {f['wall_per_step']:.2f} s"
                     + (f" (x{f['wall_per_step'] / wall['trl-' + r['precision']]:.2f})"
                        if r["side"] == "sdpo" and "trl-" + r["precision"] in wall else "")
                     + f" | {f['real_tok_s']:.0f} | "
                     f"{f['padding']:.1%} | {f['roofline']:.1%} of {peak:.0f} GFLOP/s | "
                     f"{r['peak_rss_mib'] / 1024:.2f} GiB ({r['peak_rss_mib']:,.0f} MiB) | {r['loss_first']:.6f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--max-length", dest="max_length", type=int, default=192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--model", default="default", help="`default` (SmolLM2-135M-Instruct) or a model folder")
    p.add_argument("--configs", default=DEFAULT, help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--peak-fp32", dest="peak_fp32", type=float, default=190.0, help="fp32 matmul GFLOP/s")
    p.add_argument("--peak-bf16", dest="peak_bf16", type=float, default=410.0, help="bf16 matmul GFLOP/s")
    p.add_argument("--out", default=str(RESULTS / "train"), help="writes OUT.json and OUT.md")
    p.add_argument("--from-json", dest="from_json", default=None,
                   help="rewrite OUT.md from an earlier run's OUT.json (no training)")
    p.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    if a.from_json:
        return rewrite(a)
    names = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {', '.join(unknown)} (known: {', '.join(CONFIGS)})")
    from sdpo_kit.models import resolve_model_path

    model = str(resolve_model_path(a.model))  # `default` converted here, once, not inside a timed worker
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    load_before, results = os.getloadavg(), []
    with tempfile.TemporaryDirectory(prefix="sdpo_bench_train_") as tmp:
        write_partition(Path(tmp) / "parts", a.pairs)
        for name in names:
            cmd = [sys.executable, __file__, "--worker", name, "--work", tmp, "--pairs", str(a.pairs),
                   "--max-length", str(a.max_length), "--batch", str(a.batch), "--model", model]
            # Each worker starts from an empty pair cache, so sdpo's whole run pays its reference scoring
            # pass as a user's first run does (the model comes from its folder, already converted)
            cache = Path(tmp) / f"cache_{name}"
            cache.mkdir()
            out = subprocess.run(cmd, env={**env, "SDPO_KIT_CACHE": str(cache)}, capture_output=True, text=True,
                                 check=False)
            if out.returncode:
                sys.exit(f"{name} failed:\n{out.stderr[-4000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{name}: {figures(results[-1], a)['s_per_step']:.2f} s per optimiser step", flush=True)
    load = [load_before, os.getloadavg()]
    print(markdown(a, results, load))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out + ".md").write_text(markdown(a, results, load))
    Path(a.out + ".json").write_text(json.dumps({"args": {k: v for k, v in vars(a).items()
                                                          if k not in ("worker", "work", "from_json")},
                                                 "load": load, "results": results}, indent=1))
    print(f"wrote {a.out}.md and {a.out}.json")


def markdown(a, results: list[dict], load) -> str:
    """The command line, the conditions and the table (`load`: the load averages before and after)."""
    names = ",".join(r["config"] for r in results)
    return (f"`python benchmarks/train.py --pairs {a.pairs} --max-length {a.max_length} --batch {a.batch} "
            f"--configs {names}`\n\n{a.pairs} AlpacaEval pairs, model {getattr(a, 'model', 'default')}, max_length {a.max_length}, batch "
            f"{a.batch}, 1 epoch, CPU; load average before {load[0][0]:.1f}, after {load[1][0]:.1f}\n\n"
            f"{table(results, a)}\n\n{NOTE}\n")


def rewrite(a) -> None:
    """OUT.md from a saved OUT.json (the table's columns change; the measurements stay)."""
    record = json.loads(Path(a.from_json).read_text())
    saved = argparse.Namespace(**{**vars(a), **record["args"], "out": a.out})
    Path(saved.out + ".md").write_text(markdown(saved, record["results"], record["load"]))
    print(markdown(saved, record["results"], record["load"]))


if __name__ == "__main__":
    main()
