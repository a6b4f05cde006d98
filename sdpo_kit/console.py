"""A quiet, honest console: one bar per long stage, library side-bars and known-harmless warnings off.

    sdpo train --config configs/train_cpu.yaml --partitions parts/ --out runs/sdpo --mode stepwise

`quiet_libraries()` turns off what libraries print beside our own output: `datasets`' per-call
bars (save, map, tokenise, flatten ...), transformers' weight-loading bar, and warnings we know to be harmless for our use (listed
in HARMLESS, each with why). `RunProgress` is the single training bar: it counts the optimiser
steps of the WHOLE run (every sDPO step), so its rate and ETA are for the run, not one step;
it replaces transformers' per-trainer bar and its dict-per-log printer. Under `accelerate
launch` only the main process draws it. `main_process()` says whether this process may print.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings

# (category, message regex, why it is harmless here)
HARMLESS = [
    (FutureWarning, r"`gradient_checkpointing` is deprecated",
     "transformers renamed the DPOConfig field; TRL still sets it, we never rely on it (off on CPU)"),
]


def say(message: str) -> None:
    """A line on stderr (stdout stays the command's result)."""
    print(message, file=sys.stderr, flush=True)


def note(prog: str, message: str, err: bool = False) -> None:
    """`[prog] message`, the one way a command writes a progress or warning line (`prog`: "sdpo train",
    "sdpo eval", ...): on stdout (stderr with `err`), flushed, by the main process only. Written with
    `tqdm.write`, so a line never tears a progress bar that is being drawn (the run's bar, the scorer's)."""
    if not main_process():
        return
    from tqdm import tqdm

    stream = sys.stderr if err else sys.stdout
    tqdm.write(f"[{prog}] {message}", file=stream)
    stream.flush()


def main_process() -> bool:
    """True unless this is a non-zero rank under a launcher (torchrun / accelerate set RANK)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def quiet_libraries() -> None:
    """Silence `datasets`' side bars and the known-harmless warnings (idempotent)."""
    for category, message, _why in HARMLESS:
        warnings.filterwarnings("ignore", message=message, category=category)
    import datasets  # a dependency of trl; its bars: save_to_disk, map (tokenise, truncate), flatten_indices

    datasets.disable_progress_bars()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" on every model load (once per process)


@contextlib.contextmanager
def library_bars_off():
    """TQDM_DISABLE=1 inside the block: bars that libraries draw without a `disable=` argument of
    ours (TRL's reference pass) stay hidden; the run's own bar passes disable=False."""
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before


def planned_steps(rows: int, args, world: int = 1) -> int:
    """Optimiser steps transformers will take for `rows` pairs with these DPOConfig `args`."""
    if getattr(args, "max_steps", -1) and args.max_steps > 0:
        return int(args.max_steps)
    size = max(args.per_device_train_batch_size * world, 1)
    batches = rows // size if getattr(args, "dataloader_drop_last", False) else math.ceil(rows / size)
    per_epoch = max(batches // max(args.gradient_accumulation_steps, 1), 1) if batches else 0
    return int(math.ceil(per_epoch * args.num_train_epochs))


def trainer_callback():
    """The `RunProgress` class (transformers imported lazily)."""
    from transformers import TrainerCallback

    class RunProgress(TrainerCallback):
        """One tqdm bar over the optimiser steps of every step of the run (rate and ETA for the run)."""

        def __init__(self, planned: list[int], enabled: bool = True):
            self.planned = list(planned)  # per sDPO step; each is corrected when its trainer starts
            self.enabled = enabled and main_process()
            self.bar = None
            self.step = 0

        def start_step(self, t: int) -> None:
            self.step = t
            if self.bar is not None:
                self.bar.set_description(f"sdpo train step {t}/{len(self.planned)}")

        def on_train_begin(self, args, state, control, **kwargs):
            if not self.enabled:
                return
            from tqdm.auto import tqdm

            if state.max_steps and self.step:
                self.planned[self.step - 1] = state.max_steps
            if self.bar is None:
                # disable=False: the trainer hides TRL's own side bar with TQDM_DISABLE, not ours.
                self.bar = tqdm(total=sum(self.planned), unit="opt step", dynamic_ncols=True, disable=False,
                                desc=f"sdpo train step {self.step}/{len(self.planned)}", smoothing=0.3)
            else:
                self.bar.total = sum(self.planned)
                self.bar.refresh()
            done_before = sum(self.planned[: max(self.step - 1, 0)])
            self.bar.n = done_before + state.global_step  # a resumed step starts where it left off
            self.bar.refresh()

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.bar is not None and logs and "loss" in logs:
                shown = {"loss": logs.get("loss"), "margin": logs.get("rewards/margins")}
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items() if isinstance(v, (int, float))})

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return RunProgress


def use_run_progress(trainer, progress) -> None:
    """Swap transformers' per-trainer bar (and its dict printer) for the run's one bar."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(progress)
