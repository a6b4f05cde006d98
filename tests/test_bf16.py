"""`sdpo train --bf16`: every step's reference is scored the way TRL runs the policy's first forward.

    python -m pytest -q tests/test_bf16.py

TRL/accelerate train under `--bf16` with float32 master weights and each forward under
`torch.autocast(bfloat16)`; the scorer then runs under the same autocast (`ScoreConfig.autocast`).
The oracle is TRL's own reference pass (`DPOTrainer.compute_ref_log_probs`, its precompute path,
on the collator's padded batches): the scorer's bf16 numbers must be TRL's within float noise,
while the float32 numbers the trainer used before are measurably off them (so the check can fail).
"""

from __future__ import annotations

import json
import math

import polars as pl
import pytest
from typer.testing import CliRunner

from sdpo_kit.cli import app
from test_train import FAST, assert_exact_first_log, write_partitions

BF16 = [*FAST, "--bf16", "true"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return write_partitions(tmp_path_factory.mktemp("parts_bf16"), steps=2, pairs=4)


def trl_reference(pairs: pl.DataFrame, model_dir, *flags: str) -> list[tuple[float, float]]:
    """(chosen, rejected) summed log-probs per row from TRL 1.16's own reference pass under `flags`."""
    import torch
    from accelerate import PartialState
    from trl import DPOTrainer

    from sdpo_kit.models import load_model
    from sdpo_kit.training.config import parse_train_args
    from sdpo_kit.training.trainer import build_trainer, to_dataset

    _, args, _ = parse_train_args(["--partitions", "unused", "--out", "unused", *FAST, *flags])
    model, tok = load_model(model_dir)
    frame = pairs.with_columns(pl.lit(0.0).alias("ref_chosen_logps"), pl.lit(0.0).alias("ref_rejected_logps"))
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(model, tok, to_dataset(frame, Path(tmp) / "ds", PartialState(cpu=True)), args)
        rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]  # input order
        out = []
        for i in range(0, len(rows), 2):
            batch = trainer.data_collator(rows[i:i + 2])
            batch = {k: v for k, v in batch.items() if k not in ("ref_chosen_logps", "ref_rejected_logps")}
            with torch.no_grad():
                chosen, rejected = DPOTrainer.compute_ref_log_probs(trainer, trainer.model, batch)
            out += list(zip(chosen.tolist(), rejected.tolist()))
    return out


def max_diff(scored: pl.DataFrame, oracle: list[tuple[float, float]]) -> float:
    got = zip(scored["ref_chosen_logps"].to_list(), scored["ref_rejected_logps"].to_list())
    return max(max(abs(c - oc), abs(r - orr)) for (c, r), (oc, orr) in zip(got, oracle))


def test_bf16_scorer_is_trls_bf16_reference_pass(parts, tiny_model_dir):
    from sdpo_kit.models import load_model
    from sdpo_kit.scoring.frame import ScoreConfig, score_frame

    pairs = pl.read_parquet(parts / "step_1.parquet")
    oracle = trl_reference(pairs, tiny_model_dir, "--bf16", "true")
    model, tok = load_model(tiny_model_dir)
    bf16, _ = score_frame(pairs, model, tok, ScoreConfig(max_length=64, autocast="bfloat16"), progress=False)
    fp32, _ = score_frame(pairs, model, tok, ScoreConfig(max_length=64), progress=False)
    assert max_diff(bf16, oracle) < 1e-3  # the same arithmetic up to float noise
    assert max_diff(fp32, oracle) > 3 * max_diff(bf16, oracle)  # what the trainer fed TRL before: off by the bf16 error
    assert max_diff(fp32, trl_reference(pairs, tiny_model_dir)) < 1e-4  # and in fp32 both agree as always


def test_fp32_settings_unchanged():
    """float32 scoring keeps its provenance keys (and so its caches); CPU training defaults to float32."""
    from sdpo_kit.scoring.frame import ScoreConfig
    from sdpo_kit.training.config import parse_train_args, scorer_config

    assert ScoreConfig(max_length=64).settings() == {"max_length": 64, "truncation_mode": "keep_start",
                                                     "dtype": "float32"}
    _, args, _ = parse_train_args(["--partitions", "unused", "--out", "unused", *FAST])
    assert scorer_config(args).autocast is None and scorer_config(args).settings() == ScoreConfig(max_length=64).settings()
    _, args, _ = parse_train_args(["--partitions", "unused", "--out", "unused", *BF16])
    assert scorer_config(args).settings()["autocast"] == "bfloat16"


def test_autocast_setting_is_checked():
    from sdpo_kit.errors import UsageError
    from sdpo_kit.scoring.frame import ScoreConfig

    assert ScoreConfig(autocast="none").autocast is None
    with pytest.raises(UsageError, match="must be one of"):
        ScoreConfig(autocast="int8")
    with pytest.raises(UsageError, match="over float32 weights"):
        ScoreConfig(autocast="bfloat16", dtype="bfloat16")


def train(parts, model, out, *extra) -> dict:
    result = CliRunner().invoke(app, ["train", "--partitions", str(parts), "--model", str(model), "--out", str(out),
                                      *BF16, *map(str, extra)])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads((out / "run.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["stepwise", "fixed", "mix"])
def test_bf16_run_starts_every_step_at_its_reference(tmp_path, parts, tiny_model_dir, schedule):
    from sdpo_kit.io import read_parquet_metadata

    out = tmp_path / "run"
    run = train(parts, tiny_model_dir, out, "--reference_schedule", schedule)
    assert run["precision"] == "bfloat16" and run["settings"]["trl"]["bf16"] is True
    for t in (1, 2):
        step = out / f"step_{t}"
        summary = json.loads((step / "summary.json").read_text())
        assert summary["reference_exact"] is True
        meta = json.loads(read_parquet_metadata(step / "reference.parquet")["sdpo_kit.reference"])
        # how the scorer ran, too: a resumed step re-scores a reference written by older bf16 code
        assert (meta["autocast"], meta["widths"], meta["attention"]) == ("bfloat16", "own", "cpu-fp32")
        # The log-probs TRL trained against are TRL's own bf16 pass of the step's reference model.
        reference = pl.read_parquet(step / "reference.parquet")
        oracle = trl_reference(reference.select("prompt", "chosen", "rejected"), summary["reference_model"],
                               "--bf16", "true")
        assert max_diff(reference, oracle) < 1e-3
        if t == 1 or schedule == "stepwise":  # reference = start: rewards 0 and loss ln 2 at the first step
            assert_exact_first_log(step)
        else:  # reference != start: re-scored in the same precision
            assert summary["reference_check"]["max_abs_diff"] <= 1e-4
            assert abs(summary["loss_first"] - math.log(2)) > 1e-4
    # The precision is part of the run: resuming it in float32 is refused in one line.
    result = CliRunner().invoke(app, ["train", "--partitions", str(parts), "--out", str(out), "--resume",
                                      "--bf16", "false"])
    assert result.exit_code != 0 and "bf16" in result.output, result.output


def test_autocast_rows_run_at_their_own_width_in_the_trainer_and_the_scorer(tiny_model_dir):
    """Under autocast a row's numbers depend on the width it runs at (on the default model a 72-token
    row padded to 128 moved by 0.046 nats), so the first step would start off its reference by that.
    Both sides run every row unpadded: the trainer one forward per distinct row length (counted here,
    with the per-token outputs equal to each row run alone), the scorer batches of one length only."""
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from sdpo_kit.models import load_model
    from sdpo_kit.scoring.frame import ScoreConfig
    from sdpo_kit.scoring.logps import plan
    from sdpo_kit.scoring.tokens import Sequence
    from sdpo_kit.training.padding import trim_forward

    model, _ = load_model(tiny_model_dir)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    lengths = torch.tensor([30, 12, 30, 21, 12, 7])
    width = 30
    ids = torch.randint(0, model.config.vocab_size, (6, width), generator=torch.Generator().manual_seed(0))
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    labels = ids.masked_fill(torch.arange(width)[None] < 3, -100).masked_fill(mask == 0, -100)

    def run(i=None):
        sl = slice(None) if i is None else slice(i, i + 1)
        w = width if i is None else int(lengths[i])
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(input_ids=ids[sl, :w], attention_mask=mask[sl, :w], labels=labels[sl, :w],
                         fused_lm_head=True, use_cache=False).log_probs

    alone = [run(i) for i in range(6)]
    original, calls = model.forward, []

    def counting(*args, **kwargs):
        calls.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    model.forward = counting
    trim_forward(model, groups=None)
    own = run()
    assert sorted(calls) == sorted([(2, 30), (2, 12), (1, 21), (1, 7)])  # no row padded
    for i in range(6):
        n = int(lengths[i]) - 1
        assert torch.allclose(own[i, :n], alone[i][0], atol=1e-6) and not own[i, n:].any()

    seqs = [Sequence(ids=list(range(n)), start=5, truncated=False) for n in (40, 40, 39, 39, 38, 20)]
    pairs = list(zip(seqs[0::2], seqs[1::2]))
    widths = lambda items: [sorted({len(s.ids) for _, s in it[1]}) for it in items]  # noqa: E731
    assert all(len(w) == 1 for w in widths(plan(pairs, 4096, None, own_width=True)))
    assert any(len(w) > 1 for w in widths(plan(pairs, 4096, None)))  # float32 joins within 1/32 of a length
    assert ScoreConfig(autocast="bfloat16", share_prefix=4).plan_options() == {"share_min": None, "own_width": True}
    assert ScoreConfig(share_prefix=4).plan_options() == {"share_min": 4, "own_width": False}
