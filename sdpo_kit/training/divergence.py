"""A step whose loss, gradient norm or weights become non-finite stops the run in one line.

    sdpo train --partitions parts/ --out runs/x --learning_rate 1e30   # error: step 1 diverged at ...

Without this, a diverged step trained on to "done" with NaN weights, and every later number read
NaN margins as correct (NaN > 0 is true in polars). Two checks: `DivergenceCallback` looks at
every logged loss and grad_norm (TRL logs `loss` and `grad_norm` per `logging_steps`; transformers'
`logging_nan_inf_filter` may hide a NaN loss, never a NaN gradient norm), and `check_weights` looks
at the trained weights before they are saved. Either raises `Diverged`; `sdpo_kit.training.step`
marks the step and the run "diverged" in run.json (with the reason) and the CLI prints one line.
"""

from __future__ import annotations

import math

from sdpo_kit.errors import SdpoError

HINT = "lower the learning rate (--learning_rate) or clip gradients (--max_grad_norm)"


class Diverged(SdpoError):
    """A training step produced a non-finite loss, gradient norm or weight (exit 1)."""

    exit_code = 1

    def __init__(self, step: int, where: str, value: float, learning_rate: float):
        self.record = {"step": step, "where": where, "value": str(value)}
        super().__init__(f"step {step} diverged: {where} is {value}", f"{HINT}; it was {learning_rate:g}")


def divergence_callback(t: int, learning_rate: float):
    """A `transformers.TrainerCallback` that raises `Diverged` at the first non-finite logged loss/grad_norm."""
    from transformers import TrainerCallback

    class DivergenceCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "grad_norm"):
                value = (logs or {}).get(key)
                if isinstance(value, (int, float)) and not math.isfinite(value):
                    raise Diverged(t, f"the {key.replace('_', ' ')} at optimiser step {state.global_step}", value,
                                   learning_rate)

    return DivergenceCallback()


def check_weights(t: int, model, learning_rate: float) -> None:
    """Raise `Diverged` naming the first parameter that holds a non-finite value."""
    import torch

    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = tensor[~torch.isfinite(tensor)].flatten()[0].item()
            raise Diverged(t, f"the trained weight {name}", bad, learning_rate)


def train_checked(t: int, trainer, checkpoint, args, run: dict, run_dir, state) -> None:
    """`trainer.train` under both checks; a divergence is recorded in run.json (the step's and the
    run's status "diverged", the step's `diverged`: step, where, value), then raised."""
    from sdpo_kit.runs import write_run

    trainer.add_callback(divergence_callback(t, args.learning_rate))
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
        check_weights(t, trainer.model, args.learning_rate)
    except Diverged as err:
        run["steps"][t - 1].update(status="diverged", diverged=err.record)
        run["status"] = "diverged"
        if state.is_main_process:
            write_run(run_dir, run)
        raise
