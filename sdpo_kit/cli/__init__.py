"""The `sdpo` command line: a thin layer over the library API.

    sdpo --help
    sdpo data inspect data/dpo_en_demo.json --json

Each command lives in its own module under `sdpo_kit/cli/` and imports torch, transformers
or trl only inside its body, so `sdpo --help` never pays for them.
"""

from __future__ import annotations

import typer

from sdpo_kit.cli import data_cmd, report_cmd, score_cmd, split_cmd, train_cmd

app = typer.Typer(
    name="sdpo",
    help="Stepwise DPO: curate preference data easy-to-hard, train step by step, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect preference data and write data cards.", no_args_is_help=True)
curate_app = typer.Typer(help="Score pairs with a reference model; split them into partitions.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(curate_app, name="curate")

data_app.command("inspect")(data_cmd.inspect)
data_app.command("card")(split_cmd.card)
data_app.command("split")(data_cmd.split)
curate_app.command("score")(score_cmd.score)
curate_app.command("split")(split_cmd.split)
# `train` forwards unknown flags (any trl.DPOConfig field) to its own parser.
app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train_cmd.train)
app.command("eval")(report_cmd.evaluate)
app.command("report")(report_cmd.report)


def main() -> None:
    app()
