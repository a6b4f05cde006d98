"""Seconds per optimisation step and peak memory: `sdpo train` vs a plain DPOTrainer with a reference model.

    python benchmarks/train.py --pairs 32 --max-length 192 --batch 4

Both sides train the default model (SmolLM2-135M-Instruct) for one epoch on the same real
AlpacaEval pairs with the same DPOConfig. `sdpo` is one stepwise step (T=1): the curation
scorer computes the reference log-probs, then a DPOTrainer trains with no reference model.
`plain` is what users run today: `DPOTrainer(model, args)` that loads the reference model
beside the policy and runs it at every step. Each side runs in its own process so its peak
RSS (ru_maxrss) is its own. Prints the figures and the machine load (`uptime`).
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


def dpo_flags(a) -> list[str]:
    return ["--max_length", str(a.max_length), "--per_device_train_batch_size", str(a.batch),
            "--num_train_epochs", "1", "--learning_rate", "1e-6", "--logging_steps", "1",
            "--report_to", "none", "--save_strategy", "no", "--seed", "0"]


def run_sdpo(a, work: Path) -> dict:
    from sdpo_kit.training.config import parse_train_args
    from sdpo_kit.training.loop import train_stepwise

    cfg, args, over = parse_train_args(["--partitions", str(work / "parts"), "--model", "default",
                                        "--out", str(work / "run"), *dpo_flags(a)])
    train_stepwise(cfg, args, over)
    return json.loads((work / "run" / "step_1" / "trainer_state.json").read_text())


def run_plain(a, work: Path) -> dict:
    import polars as pl
    from datasets import Dataset
    from trl import DPOTrainer

    from sdpo_kit.models import load_model
    from sdpo_kit.training.config import parse_train_args

    _, args, _ = parse_train_args(["--partitions", str(work / "parts"), "--out", "x", *dpo_flags(a)])
    args.precompute_ref_log_probs = False  # TRL's default: a live reference model
    args.output_dir = str(work / "plain")
    model, tokenizer = load_model("default")
    frame = pl.read_parquet(work / "parts" / "step_1.parquet").select("prompt", "chosen", "rejected")
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(frame.to_dicts()),
                         processing_class=tokenizer)
    assert trainer.ref_model is not None
    trainer.train()
    return {"log_history": trainer.state.log_history, "global_step": trainer.state.global_step}


def worker(a) -> None:
    began = time.time()
    state = (run_sdpo if a.worker == "sdpo" else run_plain)(a, Path(a.work))
    end = next(e for e in reversed(state["log_history"]) if "train_runtime" in e)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "side": a.worker, "wall_s": time.time() - began, "train_runtime_s": end["train_runtime"],
        "steps": state["global_step"], "peak_rss_mib": usage.ru_maxrss / 1024,
        "cpu_s": usage.ru_utime + usage.ru_stime,  # less sensitive than wall time to other users' load
    }))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--max-length", dest="max_length", type=int, default=192)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--worker", choices=["sdpo", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = []
    with tempfile.TemporaryDirectory(prefix="sdpo_bench_train_") as tmp:
        write_partition(Path(tmp) / "parts", a.pairs)
        for side in ("plain", "sdpo"):
            cmd = [sys.executable, __file__, "--worker", side, "--work", tmp, "--pairs", str(a.pairs),
                   "--max-length", str(a.max_length), "--batch", str(a.batch)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if out.returncode:
                sys.exit(f"{side} failed:\n{out.stderr[-4000:]}")
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{a.pairs} AlpacaEval pairs, default model, max_length {a.max_length}, batch {a.batch}, 1 epoch, fp32 CPU")
    print(f"{'side':<6} {'s/opt step':>10} {'train s':>8} {'wall s':>7} {'CPU s':>7} {'steps':>5} {'peak RSS MiB':>12}")
    for r in results:
        print(f"{r['side']:<6} {r['train_runtime_s'] / r['steps']:>10.2f} {r['train_runtime_s']:>8.1f} "
              f"{r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} {r['steps']:>5} {r['peak_rss_mib']:>12.0f}")
    plain, ours = results
    print(f"sdpo/plain: time per step x{ours['train_runtime_s'] / plain['train_runtime_s']:.2f}, "
          f"peak RSS x{ours['peak_rss_mib'] / plain['peak_rss_mib']:.2f} (sdpo wall includes its scoring pass)")
    print("load:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
