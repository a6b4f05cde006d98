"""`sdpo_kit.scoring.dpo`: hand-derived values, every input kind, and TRL's own DPOTrainer loss.

    python -m pytest -q tests/test_dpo.py
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from sdpo_kit.scoring.dpo import reward_margin, reward_margin_of_gammas, sigmoid_loss


def test_reward_margin_hand_values_and_input_kinds():
    import torch

    # β((π_c − r_c) − (π_r − r_r)) = 0.1·((−10 + 11) − (−12 + 12)) = 0.1
    assert reward_margin(-10.0, -12.0, -11.0, -12.0, 0.1) == pytest.approx(0.1, abs=1e-15)
    # policy lost 3 nats on chosen, gained 1 on rejected: 0.5·(−3 − 1) = −2
    args = ([-13.0, -10.0], [-11.0, -12.0], [-10.0, -11.0], [-12.0, -12.0])
    want = [0.5 * (-3 - 1), 0.5 * (1 - 0)]
    assert reward_margin(*map(np.array, args), 0.5).tolist() == want
    assert reward_margin(*(torch.tensor(a, dtype=torch.float64) for a in args), 0.5).tolist() == want
    frame = pl.DataFrame(dict(zip(("pc", "pr", "rc", "rr"), args)))
    assert frame.select(reward_margin(*map(pl.col, ("pc", "pr", "rc", "rr")), 0.5)).to_series().to_list() == want
    # the same margin from each model's γ: β·(γ_π − γ_ref), γ_π = −13 + 11 = −2, γ_ref = −10 + 12 = 2
    assert reward_margin_of_gammas(-2.0, 2.0, 0.5) == -2.0
    gammas = frame.select(pi=pl.col("pc") - pl.col("pr"), ref=pl.col("rc") - pl.col("rr"))
    assert gammas.select(reward_margin_of_gammas(pl.col("pi"), pl.col("ref"), 0.5)).to_series().to_list() == want


def test_sigmoid_loss_hand_values_label_smoothing_and_extremes():
    import torch

    assert sigmoid_loss(0.0) == pytest.approx(math.log(2), abs=1e-15)
    assert sigmoid_loss(2.0) == pytest.approx(math.log1p(math.exp(-2)), abs=1e-15)  # 0.126928...
    # ε = 0.1, m = 2: 0.9·log(1+e^−2) + 0.1·log(1+e^2) = log(1+e^−2) + 0.1·2 = 0.326928...
    assert sigmoid_loss(2.0, 0.1) == pytest.approx(math.log1p(math.exp(-2)) + 0.2, abs=1e-14)
    assert sigmoid_loss(0.0, 0.3) == pytest.approx(math.log(2), abs=1e-15)  # smoothing is symmetric at m = 0
    # stable far out, and an infinite margin costs nothing rather than nan (no 0·∞ term at ε = 0)
    assert sigmoid_loss(np.array([-1000.0, 1000.0, np.inf])).tolist() == [1000.0, 0.0, 0.0]
    t = torch.tensor([-1.0, 0.5, 3.0], dtype=torch.float64)
    assert isinstance(sigmoid_loss(t), torch.Tensor)
    assert sigmoid_loss(t).tolist() == pytest.approx(sigmoid_loss(t.numpy()).tolist(), abs=1e-15)
    assert sigmoid_loss(t, 0.2).tolist() == pytest.approx(
        [0.8 * math.log1p(math.exp(-m)) + 0.2 * math.log1p(math.exp(m)) for m in t.tolist()], abs=1e-14)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_matches_trl_dpo_trainer_sigmoid_loss(tmp_path, tiny_model_dir, label_smoothing):
    """TRL's `DPOTrainer.compute_loss` (loss_type sigmoid) on one batch of real pairs against references
    moved away from the policy, equals the mean of `sigmoid_loss(reward_margin(...))` from the scorer's
    numbers; TRL 1.16 ignores label_smoothing for this loss, so the oracle is ε = 0 in both cases."""
    import torch
    from accelerate import PartialState

    from sdpo_kit.data import load_pairs
    from sdpo_kit.models import load_model
    from sdpo_kit.scoring.frame import ScoreConfig, score_frame
    from sdpo_kit.training import trainer as train_step
    from sdpo_kit.training.config import parse_train_args

    pairs = load_pairs("data/dpo_en_demo.json", limit=6).pairs
    model, tok = load_model(tiny_model_dir)
    policy, _ = score_frame(pairs, model, tok, ScoreConfig(max_length=64), progress=False)
    # references a few nats away, alternately up and down: margins of both signs
    shift = np.array([3.0 * (-1) ** i for i in range(policy.height)])
    scored = policy.with_columns(ref_chosen_logps=pl.col("ref_chosen_logps") + shift,
                                 ref_rejected_logps=pl.col("ref_rejected_logps") - 0.5 * shift)
    n = scored.height
    _, args, _ = parse_train_args(["--partitions", str(tmp_path), "--out", str(tmp_path / "o"), "--max_length", "64",
                                   "--per_device_train_batch_size", str(n), "--beta", "0.3", "--report_to", "none",
                                   "--label_smoothing", str(label_smoothing)])
    args.output_dir = str(tmp_path / "o")
    dataset = train_step.to_dataset(scored, tmp_path / "ds", PartialState())
    trainer = train_step.build_trainer(model, tok, dataset, args)
    batch = next(iter(trainer.get_train_dataloader()))
    model.eval()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(model, batch))
    m = reward_margin(policy["ref_chosen_logps"].to_numpy(), policy["ref_rejected_logps"].to_numpy(),
                      scored["ref_chosen_logps"].to_numpy(), scored["ref_rejected_logps"].to_numpy(), 0.3)
    assert (m > 0).any() and (m < 0).any()
    assert trl_loss == pytest.approx(float(sigmoid_loss(m).mean()), rel=1e-4, abs=1e-5)
    assert trainer._metrics["eval"]["rewards/margins"][-1] == pytest.approx(float(m.mean()), rel=1e-4, abs=1e-5)
    if label_smoothing:  # the cDPO form is another number: TRL's "sigmoid" really ignores ε
        assert trl_loss != pytest.approx(float(sigmoid_loss(m, label_smoothing).mean()), rel=1e-3)
