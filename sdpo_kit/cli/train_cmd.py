"""`sdpo train` (issue 5: the trainer owns this file)."""

import typer


def train(ctx: typer.Context) -> None:
    """Stepwise DPO from partitions."""
    raise typer.Exit("not implemented yet")
