"""`sdpo curate score` (issue 3: the scorer owns this file)."""

import typer


def score(data: str = typer.Argument(..., help="Preference data.")) -> None:
    """Score every pair with a reference model."""
    raise typer.Exit("not implemented yet")
