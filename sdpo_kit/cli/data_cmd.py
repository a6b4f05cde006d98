"""`sdpo data inspect` (issue 2: the data layer owns this file)."""

import typer


def inspect(path: str = typer.Argument(..., help="Preference data file or directory.")) -> None:
    """Detected format, rows, valid pairs and rejects per reason."""
    raise typer.Exit("not implemented yet")
