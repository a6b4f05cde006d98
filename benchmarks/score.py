"""Benchmark: the scorer vs TRL's reference pass on real pairs, against the machine's matmul roofline.

    python benchmarks/score.py --pairs 48            # fp32 ours vs TRL, then ours in bf16
    python benchmarks/score.py --pairs 8 --no-trl    # quick: ours only
    python benchmarks/score.py --pairs 64 --first    # the pairs of `sdpo curate score ... --limit 64`

Same pairs (a seeded random sample of data/alpaca_eval_pairs.parquet), default model
(SmolLM2-135M-Instruct), max_length 1024. TRL's pass is `DPOTrainer._precompute_ref_logps`, i.e.
exactly what `precompute_ref_log_probs=True` runs (tokenisation excluded for TRL, included for
us). Roofline: 2 x parameters FLOPs per real token (prompt+completion after truncation, chosen
and rejected each, no padding) at the fp32 / bf16 rate of a large matmul measured here. Peak
memory is the process's peak RSS during each pass (reset through /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
DATA = Path(__file__).resolve().parent.parent / "data" / "alpaca_eval_pairs.parquet"


class Seconds(float):
    """Wall seconds that also carry the process's CPU seconds (load-independent with --threads 1)."""

    def __new__(cls, wall: float, cpu: float):
        obj = super().__new__(cls, wall)
        obj.cpu = cpu
        return obj


def matmul_gflops(dtype, n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    best = float("inf")
    for _ in range(3):
        torch.mm(a, b)
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t) / reps)
    return 2 * n**3 / best / 1e9


def peak_rss_reset() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_gib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def real_tokens(frame, tokenizer, config, trl_batch: int = 8) -> tuple[int, int, int]:
    """(real tokens, tokens TRL's precompute batches hold with padding, tokens our batches hold).

    The speed-up over TRL follows the padding it saves: on pairs of similar length (the first rows
    of the file: `--first`) TRL pads less, so the same scorer shows a smaller ratio."""
    from sdpo_kit.scoring.logps import plan
    from sdpo_kit.scoring.tokens import prompt_too_long, tokenize_pair, truncate

    seqs = []
    for row in frame.iter_rows(named=True):
        p, c, r = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        if not prompt_too_long(p, config.max_length, config.truncation_mode):
            seqs.append(tuple(truncate(p, x, config.max_length, config.truncation_mode) for x in (c, r)))
    real = sum(len(x.ids) for pair in seqs for x in pair)
    trl = sum(2 * len(seqs[i:i + trl_batch]) * max(len(x.ids) for pair in seqs[i:i + trl_batch] for x in pair)
              for i in range(0, len(seqs), trl_batch))
    items = plan(seqs, config.token_budget, config.share_prefix or None)
    ours = sum(len(it[1]) * len(it[1][0][1].ids) if it[0] == "batch" else
               sum(len(x.ids) for x in seqs[it[1]]) - it[2] for it in items)  # a shared prefix runs once
    return real, trl, ours


def run_ours(frame, model, tokenizer, config):
    from sdpo_kit.scoring.frame import score_frame

    score_frame(frame.head(2), model, tokenizer, config, progress=False)  # warm-up
    peak_rss_reset()
    t, cpu = time.perf_counter(), time.process_time()
    scored, _ = score_frame(frame, model, tokenizer, config, progress=False)
    return scored, Seconds(time.perf_counter() - t, time.process_time() - cpu), peak_rss_gib()


def run_trl(frame, model_path, max_length: int, batch_size: int):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    args = DPOConfig(output_dir="/tmp/sdpo_bench_trl", gradient_checkpointing=False, bf16=False, report_to=[],
                     use_cpu=True, max_length=max_length, per_device_train_batch_size=batch_size,
                     precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(frame.to_dicts()))
    peak_rss_reset()
    t, cpu = time.perf_counter(), time.process_time()
    ds = trainer._precompute_ref_logps(trainer.train_dataset, "train", batch_size)
    seconds = Seconds(time.perf_counter() - t, time.process_time() - cpu)
    ref = {k: (c, r) for k, c, r in zip(ds["pair_id"], ds["ref_chosen_logps"], ds["ref_rejected_logps"])}
    return ref, seconds, peak_rss_gib()


def max_diff(scored, ref: dict) -> tuple[float, float]:
    """(largest |Δlogp|, largest |Δ| / (1e-3 + 1e-5·|logp|): <= 1 passes the issue's bound)."""
    worst = worst_rel = 0.0
    for row in scored.iter_rows(named=True):
        for ours, theirs in zip((row["ref_chosen_logps"], row["ref_rejected_logps"]), ref[row["pair_id"]]):
            d = abs(ours - theirs)
            worst, worst_rel = max(worst, d), max(worst_rel, d / (1e-3 + 1e-5 * abs(theirs)))
    return worst, worst_rel


def report(name, pairs, tokens, seconds, params, peak, roof_gflops, rss):
    rate = 2 * params * tokens / seconds / 1e9
    print(f"{name:<14} {pairs / seconds:7.3f} pairs/s {tokens / seconds:8.0f} real tok/s  {seconds:7.1f} s  "
          f"{rate:6.1f} GFLOP/s = {rate / roof_gflops:5.1%} of the {peak} roofline ({roof_gflops:.0f})  "
          f"peak RSS {rss:.2f} GiB  (CPU {seconds.cpu:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0, help="Which random sample of valid pairs.")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8, help="TRL's precompute batch size.")
    parser.add_argument("--token-budget", type=int, default=4096)
    parser.add_argument("--first", action="store_true",
                        help="the first --pairs rows of the file (what `sdpo curate score --limit N` scores), not a sample")
    parser.add_argument("--no-trl", action="store_true")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads; 1 gives load-independent CPU-time ratios on a busy machine")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from sdpo_kit.data import load_pairs
    from sdpo_kit.models import load_model, resolve_model_path
    from sdpo_kit.scoring.frame import ScoreConfig

    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}")
    fp32, bf16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    print(f"matmul 2048^3: fp32 {fp32:.0f} GFLOP/s, bf16 {bf16:.0f} GFLOP/s")
    # A seeded sample over the first 4,000 rows (~140 prompts): a spread of lengths, as in real use.
    if args.first:
        frame = load_pairs(DATA, limit=args.pairs).pairs
    else:
        frame = load_pairs(DATA, limit=max(4000, 10 * args.pairs)).pairs.sample(args.pairs, seed=args.seed)
    model, tokenizer = load_model("default")
    params = sum(p.numel() for p in model.parameters())
    config = ScoreConfig(max_length=args.max_length, token_budget=args.token_budget)
    tokens, trl_tokens, our_tokens = real_tokens(frame, tokenizer, config, args.batch_size)
    print(f"{frame.height} pairs ({'first rows' if args.first else f'sample, seed {args.seed}'}), {tokens} real tokens, "
          f"{params / 1e6:.1f}M parameters, max_length {args.max_length}, token_budget {args.token_budget}")
    print(f"tokens run incl. padding: TRL {trl_tokens} ({1 - tokens / trl_tokens:.1%} padding, batch {args.batch_size}), "
          f"ours {our_tokens} ({1 - tokens / our_tokens:+.1%}; a shared prefix runs once): x{trl_tokens / our_tokens:.2f}")

    ours, seconds, rss = run_ours(frame, model, tokenizer, config)
    report("ours fp32", ours.height, tokens, seconds, params, "fp32", fp32, rss)
    if not args.no_trl:
        ref, trl_seconds, trl_rss = run_trl(frame, resolve_model_path("default"), args.max_length, args.batch_size)
        report("TRL fp32", len(ref), tokens, trl_seconds, params, "fp32", fp32, trl_rss)
        worst, rel = max_diff(ours, ref)
        print(f"speed-up {trl_seconds / seconds:.2f}x wall, {trl_seconds.cpu / seconds.cpu:.2f}x CPU time;  max |Δlogp| vs TRL {worst:.2e} "
              f"({rel:.2f} of the 1e-3 + 1e-5·|logp| bound)")
    if not args.no_bf16:
        model16, _ = load_model("default", dtype="bfloat16")
        bconfig = ScoreConfig(max_length=args.max_length, token_budget=args.token_budget, dtype="bfloat16")
        low, seconds16, rss16 = run_ours(frame, model16, tokenizer, bconfig)
        report("ours bf16", low.height, tokens, seconds16, params, "bf16", bf16, rss16)
        diff = (low["ref_chosen_logps"] - ours["ref_chosen_logps"]).abs().max()
        diff = max(diff, (low["ref_rejected_logps"] - ours["ref_rejected_logps"]).abs().max())
        print(f"bf16 vs fp32: max |Δlogp| {diff:.3f} nats; speed-up over fp32 {seconds / seconds16:.2f}x")
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
