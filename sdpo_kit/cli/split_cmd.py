"""`sdpo curate split` and `sdpo data card` (issue 4: the splitter owns this file)."""

import typer


def split(scored: str = typer.Argument(..., help="Scored parquet.")) -> None:
    """Order or bucket scored pairs into easy-to-hard partitions."""
    raise typer.Exit("not implemented yet")


def card(data: str = typer.Argument(..., help="Preference data.")) -> None:
    """Write a data card for a dataset."""
    raise typer.Exit("not implemented yet")
