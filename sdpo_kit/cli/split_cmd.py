"""`sdpo curate split` and `sdpo data card` (issue 4).

    sdpo curate split scored.parquet --steps 2 --strategy by-source --out partitions/
    sdpo data card data/dpo_en_demo.json --out data_cards/dpo_en_demo
"""

from __future__ import annotations

from typing import Optional

import typer


def _fractions(text: Optional[str]) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"--fractions {text!r}: expected comma-separated numbers like 0.5,0.3,0.2") from None


def split(
    scored: str = typer.Argument(..., help="Scored parquet (output of `sdpo curate score`)."),
    out: str = typer.Option(..., "--out", "-o", help="Partitions directory to write."),
    steps: Optional[int] = typer.Option(None, "--steps", "-T", help="Number of steps (default: sources for by-source, else 2)."),
    strategy: str = typer.Option("easy-to-hard", "--strategy", "-s",
                                 help="by-source | easy-to-hard | hard-to-easy | random | kmeans."),
    by: str = typer.Option("margin", "--by", help="Score column measuring easiness, higher = easier (e.g. margin_per_token)."),
    fractions: Optional[str] = typer.Option(None, "--fractions", help="Share per step, e.g. 0.5,0.3,0.2."),
    seed: int = typer.Option(0, "--seed", help="Seed for random and kmeans."),
    stratify: Optional[str] = typer.Option(None, "--stratify", help="'source', 'length' or 'source,length': keep each "
                                           "step's source / length-ratio mix equal to the whole's."),
    control_length: bool = typer.Option(False, "--control-length", help="Order by what the answer lengths do not "
                                        "explain: the residual of --by after a spline fit on the lengths."),
    control_knots: int = typer.Option(8, "--control-knots", help="--control-length: spline knots per length feature."),
    control_degree: int = typer.Option(3, "--control-degree", help="--control-length: spline degree (1 with 2 knots = a line)."),
    control_bins: int = typer.Option(20, "--control-bins", help="--control-length: rank the residual within this many "
                                     "length-ratio bins (1 = the residual's own order)."),
    length_buckets: int = typer.Option(5, "--length-buckets", help="Quantile buckets of the length ratio for --stratify length."),
    keep_easiest: Optional[float] = typer.Option(None, "--keep-easiest", help="Keep only this share of easiest pairs."),
    drop_truncated: bool = typer.Option(False, "--drop-truncated", help="Drop pairs whose chosen or rejected was truncated."),
    min_margin: Optional[float] = typer.Option(None, "--min-margin", help="Drop pairs whose --by column is below this."),
    max_margin: Optional[float] = typer.Option(None, "--max-margin", help="Drop pairs whose --by column is above this."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out directory."),
) -> None:
    """Order or bucket scored pairs into easy-to-hard partitions, with a manifest and a data card."""
    from sdpo_kit.escape import term
    from sdpo_kit.curate.split import SplitConfig, split_file

    cfg = SplitConfig(strategy=strategy, steps=steps, by=by, fractions=_fractions(fractions), seed=seed,
                      stratify=stratify, keep_easiest=keep_easiest, drop_truncated=drop_truncated,
                      min_margin=min_margin, max_margin=max_margin, control_length=control_length,
                      length_buckets=length_buckets, control_knots=control_knots, control_degree=control_degree,
                      control_bins=control_bins)
    manifest = split_file(scored, out, cfg, overwrite=overwrite)  # errors: the CLI boundary answers them
    num = lambda v: "n/a (not finite)" if v is None else f"{v:.3f}"  # noqa: E731  (strict JSON: inf -> null)
    for s in manifest["steps"]:
        mix = ", ".join(f"{term(k)} {v}" for k, v in s["sources"].items())  # source names are data
        typer.echo(f"step {s['step']}: {s['pairs']} pairs, mean margin {num(s['mean_margin'])}, "
                   f"reward accuracy {num(s['reward_accuracy'])} ({mix})")
    typer.echo(f"dropped: {manifest['dropped']['pairs']} {manifest['dropped']['reasons']}")
    if manifest.get("length"):
        from sdpo_kit.curate.length import split_lines

        for line in split_lines(manifest["length"]):
            typer.echo(line)
    typer.echo(f"wrote {out}/ (step_*.parquet, dropped.parquet, manifest.json, README.md, plots/)")


def card(
    data: str = typer.Argument(..., help="Preference data in any supported format, or a scored parquet."),
    out: str = typer.Option(..., "--out", "-o", help="Directory for README.md and plots/."),
    scored: bool = typer.Option(False, "--scored", help="Score the pairs with --model first (margins in the card)."),
    model: str = typer.Option("default", "--model", "-m", help="Reference model for --scored."),
    sample: Optional[int] = typer.Option(None, "--sample", help="With --scored: score only this many pairs (seeded)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="With --scored: the scorer's max_length."),
    seed: int = typer.Option(0, "--seed", help="Seed for --sample."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out directory."),
) -> None:
    """Write a Hugging Face data card (README.md + plots) for a whole dataset."""
    from sdpo_kit.report.card import write_dataset_card

    path = write_dataset_card(data, out, scored=scored, model=model, sample=sample, max_length=max_length,
                              seed=seed, overwrite=overwrite)
    typer.echo(f"wrote {path}")
