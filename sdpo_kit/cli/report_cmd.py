"""`sdpo eval` and `sdpo report` (issue 6: the report owns this file)."""

import typer


def evaluate(run: str = typer.Option(..., "--run", help="Run directory.")) -> None:
    """Evaluate S and every M_t on held-out pairs."""
    raise typer.Exit("not implemented yet")


def report(runs: list[str] = typer.Argument(..., help="Run directories.")) -> None:
    """Write a self-contained HTML report."""
    raise typer.Exit("not implemented yet")
