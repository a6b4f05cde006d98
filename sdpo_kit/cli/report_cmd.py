"""`sdpo eval` and `sdpo report` (issue 6).

    sdpo eval --run runs/sdpo --data data/alpaca_eval_pairs.parquet --limit 64
    sdpo report runs/sdpo runs/dpo --out report/
"""

from __future__ import annotations

from typing import Optional

import typer


def evaluate(
    run: str = typer.Option(..., "--run", help="Run directory written by `sdpo train`."),
    data: str = typer.Option(..., "--data", help="Held-out preference pairs (any format the data layer reads)."),
    models: str = typer.Option("all", "--models", help="all | last (S, M_{T-1}, M_T) | comma list, e.g. S,M2."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use only the first N held-out pairs."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Scorer max_length (default: the run's)."),
    truncation_mode: Optional[str] = typer.Option(None, "--truncation-mode", help="keep_start | keep_end (default: the run's)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16."),
    out: Optional[str] = typer.Option(None, "--out", help="Output folder (default RUN/eval)."),
    generate: int = typer.Option(0, "--generate", help="Answer the first N held-out prompts with S and each M_t: "
                                 "length, cut share, distinct-2, KL vs S (eval.json `behaviour`)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", help="--generate: answer limit in tokens."),
    sample_seed: Optional[int] = typer.Option(None, "--sample-seed", help="--generate: sample with this seed "
                                              "(default: greedy)."),
) -> None:
    """Score S and every M_t on held-out pairs: accuracy, mean γ, reward margins vs S and vs M_{t-1}."""
    from sdpo_kit.report.evaluate import EvalConfig
    from sdpo_kit.report.evaluate import evaluate as run_eval

    # Bad input raises sdpo_kit.errors.InputError/UsageError: the CLI boundary answers in one line.
    cfg = EvalConfig(run=run, data=data, models=models, limit=limit, max_length=max_length,
                     truncation_mode=truncation_mode, dtype=dtype, out=out, generate=generate,
                     max_new_tokens=max_new_tokens, sample_seed=sample_seed)
    result = run_eval(cfg)
    typer.echo(f"held-out pairs: {result['data']['pairs']} (rejected {result['data']['rejected']})")
    for m in result["models"]:
        typer.echo(f"  {m['name']:>4}: preference accuracy {m['accuracy']:.3f}  mean γ {m['mean_margin']:+.3f}")
    for c in result["comparisons"]:
        typer.echo(f"  {c['policy']:>4} vs {c['reference']:<4}: reward margin {c['reward_margin_mean']:+.4f}"
                   f"  reward accuracy {c['reward_accuracy']:.3f}")
    for name, b in result.get("behaviour", {}).get("models", {}).items():
        kl = "" if b.get("kl_vs_S") is None else f"  KL vs S {b['kl_vs_S']:+.4f}/token"
        typer.echo(f"  {name:>4}: answers {b['mean_tokens']:.1f} tokens, cut {b['cut_share']:.2f}, "
                   f"distinct-2 {b['distinct_2'] if b['distinct_2'] is None else round(b['distinct_2'], 3)}{kl}")
    typer.echo(f"wrote {cfg.out}/eval.json")


def report(
    runs: list[str] = typer.Argument(..., help="Run directories (several runs are compared)."),
    out: str = typer.Option("report", "--out", help="Output folder for report.html, PNGs, summary.md."),
    signal: str = typer.Option("judge_confidence", "--signal",
                               help="Held-out column used as an external difficulty signal when present."),
) -> None:
    """Write one self-contained HTML report (images inline) plus PNGs, figures.json and summary.md."""
    from sdpo_kit.report.html import write_report

    paths = write_report(runs, out, signal=signal)  # bad input: one line from the CLI boundary
    typer.echo(f"report: {paths['html']}")
    typer.echo(f"summary: {paths['summary']}")
