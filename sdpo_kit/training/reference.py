"""Reference schedules of `sdpo train`: which model is step t's reference (its log-probs come from the scorer).

    sdpo train --partitions parts/ --out runs/fixed --reference_schedule fixed
    sdpo train --partitions parts/ --out runs/mix --reference_schedule mix --ref_mix_alpha 0.5

- `stepwise` (sDPO, the default): ref_t = M_{t-1}, the step's start.
- `fixed` (iterative DPO as OpenRLHF/RLHFlow run it): ref_t = S for every t; the start is M_{t-1}.
- `mix` (TR-DPO's soft update, applied at step boundaries): ref_1 = S and
  ref_t = α·M_{t-1} + (1−α)·ref_{t-1} tensor by tensor, saved as `step_t/reference_model/`.

Whatever the schedule, the reference is only loaded to be scored (through the scorer's
fingerprint-keyed pair cache) and freed before training: no reference model in memory.
"""

from __future__ import annotations

from pathlib import Path

from sdpo_kit.errors import InputError

SCHEDULES = ("stepwise", "fixed", "mix")
CHECK_PAIRS = 4  # pairs re-scored without any cache to check a reference that is not the start
CHECK_TOLERANCE = 1e-4  # nats on a summed log-prob: float32 batching noise, far below any model change
# The re-score check under autocast: the 4 pairs run in other batches than when the reference was scored,
# and a bf16 row's numbers depend on its batch (TRL's own bf16 pass and the scorer's padded batches moved
# by up to 0.058 nats on the default model), while fp32 vs bf16 references differ by 0.85 nats on average
# (up to 3.2). 0.1 nats keeps that 8x apart from the noise.
AUTOCAST_TOLERANCE = {"bfloat16": 0.1, "float16": 5e-3}
# |rewards/chosen|, |rewards/rejected| of a step's first logged batch that still count as starting at the
# reference (β x nats: 0.01 nats at β 0.1), in float32 and under autocast alike (rows at their own width)
FIRST_STEP_TOLERANCE = 1e-3


def reference_for_step(t: int, start: str | Path, cfg, run: dict, state) -> tuple[Path, str]:
    """(model folder, kind) of step t's reference under the run's schedule (`cfg.schedule`).

    `start` is M_{t-1} (S at t = 1); kind is one of `sdpo_kit.runs.REFERENCE_KINDS`: "S" at
    t = 1 and under `fixed`, "M_{t-1}" under `stepwise`, "mix" under `mix` (t > 1; the averaged
    model is written once, by the main process, to `step_t/reference_model/`).
    """
    if t == 1:
        return Path(start), "S"
    if cfg.schedule == "stepwise":
        return Path(start), "M_{t-1}"
    if cfg.schedule == "fixed":
        return Path(run["base_model"]), "S"
    out = Path(cfg.out) / f"step_{t}" / "reference_model"
    previous = Path(run["base_model"]) if t == 2 else Path(cfg.out) / f"step_{t - 1}" / "reference_model"
    if not (out / "config.json").is_file() and state.is_main_process:
        mix_models(start, previous, cfg.ref_mix_alpha, out)
    state.wait_for_everyone()
    return out, "mix"


def mix_models(policy: str | Path, reference: str | Path, alpha: float, out: Path) -> str:
    """Write α·policy + (1−α)·reference (every floating tensor; others from `policy`) to `out`; its fingerprint."""
    import torch

    from sdpo_kit.models import load_checked_model, model_fingerprint, save_model

    model, tokenizer = load_checked_model(policy)
    ref = load_checked_model(reference)[0].state_dict()
    mixed = {}
    for name, a in model.state_dict().items():
        if name not in ref or ref[name].shape != a.shape:
            raise InputError(reference, f"cannot be averaged with {policy}: tensor {name} differs in name or shape")
        mixed[name] = alpha * a + (1 - alpha) * ref[name] if a.is_floating_point() else a
    with torch.no_grad():
        model.load_state_dict(mixed)
    save_model(model, tokenizer, out)
    return model_fingerprint(model)


def check_reference_logps(scored, model, tokenizer, scorer) -> dict:
    """Re-score the first pairs of `scored` with `model` (the reference) without any cache.

    For a reference that is not the step's start the first loss is not ln 2, so exactness is
    checked directly: the log-probs TRL trains against must be this model's. Returns
    {pairs, max_abs_diff, exact}.
    """
    from sdpo_kit.scoring.frame import score_frame

    head = scored.head(CHECK_PAIRS)
    columns = [c for c in ("pair_id", "prompt", "chosen", "rejected", "tools", "chat_template_kwargs") if c in head.columns]
    fresh, _ = score_frame(head.select(columns), model, tokenizer, scorer, progress=False)
    joined = head.select("pair_id", "ref_chosen_logps", "ref_rejected_logps").join(
        fresh.select("pair_id", "ref_chosen_logps", "ref_rejected_logps"), on="pair_id", suffix="_fresh")
    diffs = [abs(r[c] - r[f"{c}_fresh"]) for r in joined.iter_rows(named=True)
             for c in ("ref_chosen_logps", "ref_rejected_logps")]
    worst = max(diffs) if diffs else 0.0
    tolerance = AUTOCAST_TOLERANCE.get(scorer.autocast, CHECK_TOLERANCE)
    return {"kind": "rescored", "pairs": joined.height, "max_abs_diff": worst, "exact": bool(joined.height) and worst <= tolerance}
