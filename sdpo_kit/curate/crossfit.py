"""`sdpo curate crossfit`: learning difficulty of every pair by cross-fitting (Selective DPO's validation loss).

    sdpo curate crossfit scored.parquet --config configs/train_cpu.yaml --folds 2 --seeds 3 --out difficulty.parquet

For each seed the pairs are split into `--folds` folds by prompt (seeded; no prompt in two folds); for
each fold, plain DPO of S on the other folds (the trainer, `--mode dpo`), then the held-out fold is
scored by that model M against S (the scorer). Per pair, over the runs that held it out (one per seed):
`val_loss` = mean of TRL's sigmoid loss −log σ(β(γ_M − γ_S)) (TRL 1.16 ignores label_smoothing there; so do we),
`val_loss_sd`, `learned_share` (share of runs with implicit reward margin > 0), `n_runs` and
`crossfit_margins` (the margins, one per seed). Gao et al. (ICML 2025) average over 3 seeds x 2 halves
and 5 checkpoints; here each run's final model. Every input column is kept, so
`sdpo curate split --keep_easiest 0.7 --by val_loss` works on the output. Cost: `seeds` DPO epochs over
the data (each run trains on (folds-1)/folds of it) plus one scoring pass per seed.

Training settings are `sdpo train`'s (every trl.DPOConfig field, --lora_*, --order; max_length and
truncation_mode default to the input's scorer settings). Runs live in `OUT.crossfit/seedS_foldF/` and
are the unit of resume: a killed command redoes only unfinished runs and writes the same file; a
changed input or setting starts afresh and says why. The output's parquet footer `sdpo_kit.crossfit`
records the settings, the fold of every row per seed, each run's model fingerprint and pair digests,
and the seed agreement (Spearman of val_loss between seeds).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from sdpo_kit.curate.crossfit_runs import PROG, crossfit
from sdpo_kit.errors import UsageError

TRAIN_KEYS = ("model", "order", "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
IGNORED_KEYS = ("mode", "partitions", "reference_schedule", "ref_mix_alpha")  # `sdpo train` YAML keys without meaning here


@dataclass
class CrossfitConfig:
    """Learning difficulty by cross-fitting: per seed, folds by prompt; DPO on the other folds scores each fold.

    Options: the fields below, then `sdpo train`'s training settings (every trl.DPOConfig field: --beta,
    --learning_rate, --seed, ...; --model, --lora_*, --order). Output: the input's columns plus val_loss,
    val_loss_sd, learned_share, n_runs, crossfit_margins.
    """

    data: str = field(metadata={"help": "Scored parquet from `sdpo curate score` (S's log-probs); also the first "
                                        "argument without a flag."})
    out: str = field(metadata={"help": "Parquet to write: the input's rows and columns plus the difficulty columns."})
    folds: int = field(default=2, metadata={"help": "Folds per seed (by prompt); each run trains on all folds but one."})
    seeds: int = field(default=3, metadata={
        "help": "Fold assignments and training seeds (--seed, --seed+1, ...); each pair is held out once per seed."})
    work: str | None = field(default=None, metadata={"help": "Folder of the runs (default: OUT.crossfit beside --out)."})
    resume: bool = field(default=True, metadata={
        "help": "Keep finished runs of an interrupted command with the same input and settings (else start afresh)."})
    keep_models: bool = field(default=False, metadata={
        "help": "Keep each run's model (otherwise deleted once its fold is scored; the fingerprint is recorded)."})

    def __post_init__(self):
        if self.folds < 2:
            raise UsageError("--folds", f"must be >= 2 (one fold is held out while the others train), got {self.folds}")
        if self.seeds < 1:
            raise UsageError("--seeds", f"must be >= 1, got {self.seeds}")


def _train_keys():
    """`sdpo train`'s own settings that mean something here, with StepwiseConfig's defaults and help."""
    from sdpo_kit.training.config import StepwiseConfig

    types = typing.get_type_hints(StepwiseConfig)
    fields = [(f.name, types[f.name], dataclasses.field(default=f.default, metadata=f.metadata))
              for f in dataclasses.fields(StepwiseConfig) if f.name in TRAIN_KEYS]
    return dataclasses.make_dataclass("CrossfitTraining", fields)


def parse(argv: list[str]):
    """([CrossfitConfig, training keys, DPOConfig], given) from flags over an optional `--config` YAML."""
    from sdpo_kit.parser import parse_flags
    from sdpo_kit.training.config import from_trl, train_parser

    def from_yaml(config: dict, path) -> dict:  # a `trl dpo` file's output_dir names a run folder, not our --out
        return from_trl({k: v for k, v in config.items() if k != "output_dir"}, path)

    parser = train_parser((CrossfitConfig, _train_keys()), prog=PROG)
    if argv and not argv[0].startswith("-"):  # TRL's parser has no positionals: SCORED.parquet first is --data
        argv = ["--data", *argv]
    return parse_flags(parser, argv, map_yaml=from_yaml, extra_keys=IGNORED_KEYS)


def parse_run_args(prog: str, classes, argv: list[str]):
    """This command's parser in the registry (`sdpo_kit.cli.COMMANDS`): `[cfg, keys, args, given]` for `run`."""
    parsed = parse(argv)
    return None if parsed is None else [*parsed[0], parsed[1]]


def run(cfg: CrossfitConfig, keys=None, args=None, given: set[str] | None = None) -> Path:
    """`sdpo curate crossfit`: every (seed, fold) run, then the difficulty file; returns its path.

    `keys` (`sdpo train`'s model/order/lora_* settings) and `args` (the trl.DPOConfig): None = the
    command's defaults, as with no such flag; `given`: the settings the command line set (None: the
    TRL settings that differ from the defaults), which keep the input's max_length unless set."""
    from sdpo_kit.training.config import trl_overrides

    if keys is None or args is None:
        (_, default_keys, default_args), _ = parse(["--data", str(cfg.data), "--out", str(cfg.out)])
        keys, args = keys or default_keys, args or default_args
    given = set(given) if given is not None else set(trl_overrides(args))
    if "sigmoid" not in [str(getattr(t, "value", t)) for t in args.loss_type] or len(args.loss_type) != 1:
        raise UsageError("--loss_type", f"crossfit measures the sigmoid DPO loss; got {args.loss_type}")
    if args.ld_alpha is not None:  # its val_loss (scoring/dpo.py) sums every token alike
        raise UsageError("--ld_alpha", "crossfit measures the plain sigmoid DPO loss; remove --ld_alpha")
    step_cfg = {k: getattr(keys, k) for k in TRAIN_KEYS}
    from sdpo_kit.parser import SEED_MAX
    from sdpo_kit.training.config import StepwiseConfig, _check_values

    _check_values(args)  # train's DPO checks (beta > 0, ...), before any work
    if args.seed + cfg.seeds - 1 > SEED_MAX:  # the runs use --seed, --seed+1, ...
        raise UsageError("--seed", f"--seed {args.seed} + --seeds {cfg.seeds} - 1 exceeds {SEED_MAX} (2**32 - 1)")

    StepwiseConfig(**step_cfg, partitions="-", out="-", mode="dpo")  # their checks, once, before any work
    return crossfit(cfg, step_cfg, args, given)
