"""Which `trl.DPOConfig` options `sdpo train` honours, and the ones it refuses before run.json is written.

    sdpo train --partitions parts/ --out runs/x --report_to wandb   # error: --report_to: ... (one line)

`sdpo train` feeds TRL the reference log-probs of its scorer (`precompute_ref_log_probs`), so an
option that changes how TRL would sum the *reference's* log-probs must change the scorer's sums
the same way, or be refused. Audit of TRL 1.16's `dpo_trainer.py` (`__init__` checks,
`compute_ref_log_probs`, `_compute_loss`):
- changes the reference sums: `ld_alpha` (below); `max_length`/`truncation_mode` (the scorer
  truncates as TRL does); `padding_free` (TRL 1.16 turns it off itself): exact.
- loss or policy side only, so the injected sums reach them as TRL's own would: every `loss_type`
  (ipo and sigmoid_norm divide by the same token counts), `loss_weights`, `f_divergence_type`,
  `f_alpha_divergence_coef`, `label_smoothing`, `beta`, `use_weighting` (policy probabilities),
  `discopop_tau`, `disable_dropout` and `neftune_noise_alpha` (TRL's reference pass runs before
  training mode / the noise hook), `pad_token`, `pad_to_multiple_of`, `precompute_ref_batch_size`.
- fixed by sdpo train: `precompute_ref_log_probs` (always the scorer's), `output_dir`.
`ld_alpha` is honoured: the scorer's per-token prefix sums give
TRL's LD-weighted sums for the reference (`sdpo_kit.scoring.frame.ld_weighted`). Refused here, each
in one line naming the flag:
- options that need the network or a package sdpo_kit does not ship (report_to other than none or
  an installed local logger, push_to_hub and hub_*, use_liger_kernel), or a second model
  (sync_ref_model: the reference is the scorer's, never a live model);
- combinations TRL itself rejects only when the trainer is built (after run.json says "running").
"""

from __future__ import annotations

import dataclasses

from sdpo_kit.errors import UsageError

# TrainingArguments' Hub settings: only meaningful with push_to_hub, which needs the network.
HUB_KEYS = ("hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision")
LOCAL_LOGGERS = {"tensorboard": "tensorboard"}  # report_to value -> the package it needs (no network)
# TRL 1.16 dpo_trainer.py: f-divergences other than reverse_kl are defined only for these losses.
F_DIVERGENCE_LOSSES = {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}


def check_dpo_options(args) -> None:
    """Refuse, in one line naming the flag, a DPOConfig option sdpo train cannot honour exactly."""
    _check_network(args)
    _check_optimiser(args)
    if args.sync_ref_model:
        raise UsageError("--sync_ref_model", "not supported: the reference of each step is the scorer's log-probs of "
                         "the previous model (use --reference_schedule mix for a soft-updated reference)")
    if args.model_init_kwargs:
        raise UsageError("--model_init_kwargs", "not used: sdpo train loads --model itself in float32 (use --bf16 "
                         "for mixed precision); remove it")
    if getattr(args, "trust_remote_code", False):
        raise UsageError("--trust_remote_code", "not supported: sdpo train never runs a model folder's own code")
    losses = list(args.loss_type)
    if args.f_divergence_type != "reverse_kl" and not set(losses) <= F_DIVERGENCE_LOSSES:
        raise UsageError("--f_divergence_type", f"{_value(args.f_divergence_type)} works only with loss types "
                         f"{sorted(F_DIVERGENCE_LOSSES)}, got --loss_type {','.join(losses)}")
    if args.use_weighting and {"aot", "aot_unpaired"} & set(losses):
        raise UsageError("--use_weighting", "TRL has no weighting for the aot/aot_unpaired losses (they sort the pairs)")
    if "exo_pair" in losses and args.label_smoothing == 0:
        raise UsageError("--label_smoothing", "must be > 0 with --loss_type exo_pair (the EXO paper uses 1e-3)")
    if args.loss_weights is not None and len(args.loss_weights) != len(losses):
        raise UsageError("--loss_weights", f"{len(args.loss_weights)} weights for {len(losses)} loss types")
    if _value(args.eval_strategy) != "no":
        raise UsageError("--eval_strategy", "sdpo train has no evaluation set while training; use `sdpo eval` "
                         "on held-out pairs after the run")
    if args.ld_alpha is not None and not 0 <= args.ld_alpha <= 1:
        raise UsageError("--ld_alpha", f"must be in [0, 1] (LD-DPO's weight of the tokens past the shorter answer), "
                         f"got {args.ld_alpha}")


def _check_optimiser(args) -> None:
    """The ranges torch's AdamW checks only when the trainer builds it (after run.json said "running")."""
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, name) < 1:
            raise UsageError(f"--{name}", f"must be in [0, 1), got {getattr(args, name)}")
    for name in ("adam_epsilon", "weight_decay", "max_grad_norm", "warmup_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise UsageError(f"--{name}", f"must be >= 0, got {getattr(args, name)}")


def _check_network(args) -> None:
    """report_to, push_to_hub, hub_*, use_liger_kernel: a one-line refusal instead of a failure mid-run."""
    import importlib.util

    for name in [r for r in (args.report_to or []) if r != "none"]:
        package = LOCAL_LOGGERS.get(name)
        if package is None:
            raise UsageError("--report_to", f"{name!r} needs the network or a package sdpo train does not ship; "
                             f"use none{' or ' + ', '.join(LOCAL_LOGGERS) if LOCAL_LOGGERS else ''}")
        if importlib.util.find_spec(package) is None:
            raise UsageError("--report_to", f"{name} needs the package {package!r}, which is not installed")
    if args.push_to_hub:
        raise UsageError("--push_to_hub", "not supported: sdpo train never uses the network; the models are in "
                         "the run folder (step_*/model)")
    defaults = {f.name: f.default for f in dataclasses.fields(type(args)) if f.name in HUB_KEYS}
    changed = [k for k in HUB_KEYS if k in defaults and _value(getattr(args, k)) != _value(defaults[k])]
    if changed:
        raise UsageError(f"--{changed[0]}", "only used with --push_to_hub, which sdpo train refuses (no network)")
    if getattr(args, "use_liger_kernel", False):
        raise UsageError("--use_liger_kernel", "not supported (another package; TRL deprecates it)")


def _value(x):
    return getattr(x, "value", x)  # an enum's value, else the value itself
