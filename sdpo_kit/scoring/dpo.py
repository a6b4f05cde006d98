"""The DPO quantities every job computes, written once: implicit reward margin and sigmoid loss.

    python -c "from sdpo_kit.scoring.dpo import reward_margin, sigmoid_loss; m = reward_margin(-10., -12., -11., -12., 0.1); print(m, sigmoid_loss(m))"

Pure functions of summed completion log-probs (the scorer's `*_logps` columns); they work on
Python floats, numpy arrays, torch tensors and polars expressions alike (only `+ - *`), except
`sigmoid_loss`, which takes floats, numpy arrays or torch tensors. Shapes: N = pairs; inputs of
one call share a shape (or broadcast), outputs have it too.

Used by the scorer's `--policy` columns (`scoring/frame.py`), `sdpo eval`'s comparisons
(`report/evaluate.py`) and the trainer's end-of-step numbers (`training/step.py`).
"""

from __future__ import annotations


def reward_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """DPO's implicit reward margin β·((π_c − r_c) − (π_r − r_r)).

    Args: summed completion log-probs, each (N,) (or scalars): π_c/π_r of the policy on the
    chosen/rejected answer, r_c/r_r of the reference; `beta` the DPO β.
    Returns (N,): TRL's `rewards/chosen − rewards/rejected` per pair (its `rewards/margins` is
    the mean); > 0 means the policy moved towards the chosen answer relative to the reference.
    """
    return beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))


def reward_margin_of_gammas(policy_gamma, ref_gamma, beta: float):
    """The same margin from each model's own preference γ = log p(y_c|x) − log p(y_r|x): β·(γ_π − γ_ref).

    Args: γ_π, γ_ref each (N,) (or scalars; polars expressions work). Returns (N,). Equal to
    `reward_margin` regrouped (up to float rounding in the last bits): what `sdpo eval` has,
    one γ column per model.
    """
    return beta * (policy_gamma - ref_gamma)


def sigmoid_loss(margin, label_smoothing: float = 0.0):
    """Per-pair DPO sigmoid loss of β-scaled margins m: −(1−ε)·log σ(m) − ε·log σ(−m).

    Args: `margin` (N,) = `reward_margin(...)` (already multiplied by β), a torch tensor, a
    numpy array or a float; `label_smoothing` ε in [0, 0.5). Returns (N,) of the same kind.
    ε = 0 is TRL 1.16's `loss_type="sigmoid"` exactly (`DPOTrainer` ignores `label_smoothing`
    for that loss: it only enters `robust`, `exo_pair` and `aot`); ε > 0 is the conservative
    DPO (cDPO) form that older TRL used for "sigmoid".
    """
    if type(margin).__module__.startswith("torch"):  # a tensor: torch's own stable log σ (no torch import otherwise)
        import torch

        logsigmoid = torch.nn.functional.logsigmoid
    else:
        import numpy as np

        margin = np.asarray(margin, dtype=np.float64)
        logsigmoid = lambda x: -np.logaddexp(0.0, -x)  # noqa: E731  (log σ(x), stable for large |x|)
    if not label_smoothing:  # exactly −log σ(m): no 0·(−log σ(−m)) term that an infinite margin would turn into nan
        return -logsigmoid(margin)
    return -(1 - label_smoothing) * logsigmoid(margin) - label_smoothing * logsigmoid(-margin)
