"""`sdpo train`'s settings: `StepwiseConfig`, the flag/YAML parser over it and `trl.DPOConfig`
(`sdpo_kit.parser`'s steps over TRL's parser), a `trl dpo` YAML read as is, the scorer settings read
from the partitions, and the settings a run records and `--resume` restores.

    sdpo train --help        # every flag this parser knows (--fields: the same)
    sdpo train --config configs/sdpo_demo.yaml --partitions parts/ --out runs/x
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path

from sdpo_kit.errors import InputError, UsageError

MODES = ("stepwise", "dpo")
ORDERS = ("shuffled", "sequential")
# Flags that name the run rather than change what it computes: a resume may always pass them.
RUN_KEYS = ("partitions", "out", "resume", "config")

@dataclass
class StepwiseConfig:
    """Stepwise DPO from partitions: step t trains on partition t with M_{t-1} as reference and start.

    Options: the fields below, then every trl.DPOConfig field (--beta, --learning_rate, ...). max_length and
    truncation_mode default to the settings the partitions were scored with. A `trl dpo --config` YAML is read
    as is (model_name_or_path, use_peft, lora_*). --resume restores the run's own settings; a changed
    --partitions, --model or training setting is refused. Data-parallel on CPU (gloo):
    `accelerate launch --multi_gpu --num_processes 2 $(which sdpo) train ...`.
    """

    partitions: str | None = field(
        default=None, metadata={"help": "Partitions folder from `sdpo curate split` (manifest.json, step_*.parquet)."}
    )
    model: str = field(default="default", metadata={"help": "SFT model S: `default` or a local model directory."})
    out: str | None = field(default=None, metadata={"help": "Run directory to create (or continue with --resume)."})
    mode: str = field(
        default="stepwise",
        metadata={"help": "`stepwise`: one DPO run per partition, reference = previous step. `dpo`: one run on "
                  "all partitions together, reference = S (the paper's baseline)."},
    )
    order: str = field(
        default="shuffled",
        metadata={"help": "Batch order inside a step: `shuffled` (TRL's default) or `sequential` (the "
                  "partition's row order, e.g. easy-to-hard)."},
    )
    lora_r: int = field(
        default=0, metadata={"help": "LoRA rank; 0 = full fine-tuning. Adapters are merged after each step."}
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Comma-separated module names for LoRA, or `all-linear`."}
    )
    reference_schedule: str = field(
        default="stepwise",
        metadata={"help": "Reference of step t (log-probs from the scorer, never a model in memory): `stepwise` "
                  "= M_{t-1} (sDPO); `fixed` = S at every step; `mix` = alpha*M_{t-1} + (1-alpha)*ref_{t-1} "
                  "(TR-DPO's soft update, saved as step_t/reference_model). The start is always M_{t-1}. "
                  "Ignored by --mode dpo."},
    )
    ref_mix_alpha: float = field(
        default=0.5, metadata={"help": "`mix` schedule: weight of M_{t-1} in the averaged reference, in [0, 1]."}
    )
    trim_padding: bool = field(
        default=False, metadata={"help": "Run each batch's rows (chosen and rejected) in two length groups, each cut "
                                 "to its longest real row: the same numbers up to float rounding, less padding "
                                 "computed (sdpo_kit/training/padding.py)."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue the run in --out: skip finished steps, resume the current one "
                                 "from its latest checkpoint."}
    )

    def __post_init__(self):
        if not self.partitions:
            raise UsageError("--partitions is required: the folder written by `sdpo curate split`.")
        if not self.out:
            raise UsageError("--out is required: the run directory, e.g. runs/NAME.")
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {MODES}, got {self.mode!r}.")
        if self.order not in ORDERS:
            raise UsageError(f"--order must be one of {ORDERS}, got {self.order!r}.")
        _check_schedule(self)
        if self.lora_r < 0 or self.lora_alpha <= 0:
            raise UsageError(
                f"--lora_r must be >= 0 and --lora_alpha > 0, got r={self.lora_r}, alpha={self.lora_alpha}."
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}.")

    @property
    def schedule(self) -> str:
        """The reference schedule the run follows, resolved here once: --reference_schedule under
        --mode stepwise; `stepwise` under --mode dpo (its one step's reference is its start, S)."""
        return self.reference_schedule if self.mode == "stepwise" else "stepwise"

    @property
    def mix_alpha(self) -> float | None:
        """--ref_mix_alpha where it applies (the mix schedule), else None."""
        return self.ref_mix_alpha if self.schedule == "mix" else None


def _check_schedule(cfg) -> None:
    from sdpo_kit.training.reference import SCHEDULES

    if cfg.reference_schedule not in SCHEDULES:
        raise UsageError(f"--reference_schedule must be one of {SCHEDULES}, got {cfg.reference_schedule!r}.")
    if not 0.0 <= cfg.ref_mix_alpha <= 1.0:
        raise UsageError(f"--ref_mix_alpha must be in [0, 1], got {cfg.ref_mix_alpha}.")

def train_parser(classes: tuple = (StepwiseConfig,), prog: str = "sdpo train"):
    """`classes` (StepwiseConfig) + trl.DPOConfig flags (TRL's parser); a bad flag raises `UsageError` (one line).

    `sdpo curate crossfit` passes its own classes: its training settings are `sdpo train`'s, defaults included."""
    import torch
    from trl import TrlParser

    from sdpo_kit.parser import add_common

    class Parser(TrlParser):
        def error(self, message):  # argparse would print the whole usage and exit
            raise UsageError(f"{prog}: {message} (`{prog} --help` lists every flag)")

    # allow_abbrev=False: --learning_rat is a typo, not a prefix
    parser = Parser((*classes, _dpo_config()), prog=prog, allow_abbrev=False, add_help=False,
                    description=classes[0].__doc__)
    parser.classes = [*classes, _dpo_config()]
    add_common(parser)
    defaults = {"output_dir": "unused", "logging_first_step": True, "save_total_limit": 1}
    if not torch.cuda.is_available():  # TRL's GPU defaults fail or crawl on CPU; flags/YAML still win
        # use_cpu also makes transformers pick accelerate's MULTI_CPU (gloo) state under a launcher.
        defaults.update(bf16=False, gradient_checkpointing=False, use_cpu=True)
    parser.set_defaults(**defaults)
    from sdpo_kit.console import quiet_libraries

    quiet_libraries()  # before DPOConfig is built: its harmless FutureWarning would precede every message
    return parser


def _dpo_config():
    from trl import DPOConfig

    return DPOConfig


def parse(argv: list[str]):
    """`([cfg, args], given)` from flags over an optional `--config` YAML (ours or a `trl dpo` file);
    None after printing --help. The CLI calls this instead of the generic parser (TRL's fields beside ours)."""
    from sdpo_kit.parser import parse_flags

    argv = ["--help" if a == "--fields" else a for a in argv]  # `--fields`: the old spelling of --help
    return parse_flags(train_parser(), argv, map_yaml=from_trl)


def default_dpo_config(cfg: StepwiseConfig):
    """The `trl.DPOConfig` `sdpo train` uses when no TRL setting is given (our CPU defaults included)."""
    return train_parser().parse_args_into_dataclasses(["--partitions", str(cfg.partitions), "--out", str(cfg.out)])[1]


def parse_run_args(prog: str, classes, argv: list[str]):
    """`sdpo train`'s parser in the command registry: `[cfg, args, given]` for `run`, None after --help."""
    parsed = parse(argv)
    return None if parsed is None else [*parsed[0], parsed[1]]


def parse_train_args(argv: list[str]):
    """`(StepwiseConfig, DPOConfig, overrides)` from flags and an optional `--config` YAML.

    `overrides` holds the DPOConfig values that differ from our defaults (for config.yaml).
    Every problem with the flags or the YAML raises `UsageError` in one line.
    """
    (cfg, args), given = parse(argv)
    return cfg, args, prepare(cfg, args, given)


def prepare(cfg, args, given: set[str]) -> dict:
    """Scorer settings from the partitions, value checks, TRL settings we fix; returns the overrides."""
    _from_partitions(cfg, args, given)
    _check_values(args)
    overrides = trl_overrides(args)
    finish_args(cfg, args)
    return overrides


SCORER_KEYS = ("max_length", "truncation_mode")  # set once, at curation: train reads them from the partitions


def _from_partitions(cfg, args, given: set[str]) -> None:
    """max_length / truncation_mode as the partitions were scored (manifest.json `scorer`), unless given.

    Step 1 reuses the curation scores only when these match, and a resumed run keeps its own.
    """
    from sdpo_kit.runs import read_manifest

    if cfg.resume and (Path(cfg.out) / "run.json").exists():
        return
    try:
        scorer = (read_manifest(cfg.partitions) or {}).get("scorer")
    except (InputError, OSError):
        return  # no or no readable manifest: train says so when it reads the partitions
    take_scorer_settings(args, given, scorer, Path(cfg.partitions) / "manifest.json", "sdpo train", "partitions")


def take_scorer_settings(args, given: set[str], scorer, where, prog: str, what: str) -> None:
    """Set `args`' max_length / truncation_mode to `scorer`'s (a scored file's provenance) unless given; say so."""
    if not isinstance(scorer, dict):
        return
    taken = {k: scorer[k] for k in SCORER_KEYS if k in scorer and k not in given and getattr(args, k) != scorer[k]}
    if not taken:
        return
    for key, value in taken.items():
        setattr(args, key, value)
    from sdpo_kit.console import note

    said = " and ".join(f"{k} {v}" for k, v in taken.items())
    note(prog, f"{said} as the {what} were scored ({where}); pass {' / '.join('--' + k for k in taken)} to override")


def trl_overrides(args) -> dict:
    """The DPOConfig fields that differ from the parser's defaults, as plain values (config.yaml, run.json)."""
    base = train_parser().parse_args_into_dataclasses(["--partitions", "x", "--out", "x"])[1]
    return {
        f.name: plain_value(getattr(args, f.name))
        for f in dataclasses.fields(args)
        if f.init and f.name != "output_dir" and getattr(args, f.name) != getattr(base, f.name)
    }


def finish_args(cfg, args) -> None:
    """The DPOConfig settings sdpo always sets itself, whatever the config says."""
    args.precompute_ref_log_probs = True  # the reference is always the scorer's, never a live model
    strategy = plain_value(args.train_sampling_strategy)
    if cfg.order == "sequential" and strategy not in ("random", "sequential"):
        raise UsageError("--order sequential", f"keeps the partition's row order; --train_sampling_strategy "
                         f"{strategy} would reorder it: pass one of the two")
    if cfg.order == "sequential":
        args.train_sampling_strategy = "sequential"  # transformers' public, order-preserving sampler


# --- a `trl dpo --config` file, read as is ---------------------------------------------------------

TRL_LORA_DEFAULTS = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}  # trl.ModelConfig 1.16's defaults
TRL_REFUSED = ("use_dora", "use_rslora", "load_in_8bit", "load_in_4bit")  # would change what is trained
TRL_DATA = ("datasets", "streaming", "test_split_size")  # trl's dataset mixture (besides dataset_*)


def from_trl(config: dict, path) -> dict:
    """A `trl dpo` YAML in our keys: model_name_or_path -> model, use_peft/lora_* -> LoRA, output_dir -> out;
    dataset keys and the other `trl.ModelConfig`/`ScriptArguments` keys get a one-line notice. `env:` sets
    environment variables (as TrlParser does)."""
    import os

    import trl

    config = dict(config)
    env = config.pop("env", None)
    if env is not None:
        if not isinstance(env, dict):
            raise UsageError(path, f"env: expected a mapping of VARIABLE: value, got {env!r}")
        os.environ.update({str(k): str(v) for k, v in env.items()})
    ours = {f.name for dc in (StepwiseConfig, _dpo_config()) for f in dataclasses.fields(dc)}
    theirs = {f.name for dc in (trl.ModelConfig, trl.ScriptArguments, trl.DatasetMixtureConfig)
              for f in dataclasses.fields(dc)} - ours
    mapped = []
    for trl_key, key in (("model_name_or_path", "model"), ("output_dir", "out")):
        if trl_key in config and config[trl_key] is not None:
            if key in config:
                raise UsageError(path, f"{trl_key} and {key} name the same setting; keep one")
            config[key] = config.pop(trl_key)
            mapped.append(f"{trl_key} -> {key}")
    if "use_peft" in config:
        if config.pop("use_peft"):
            unset = [k for k in TRL_LORA_DEFAULTS if k not in config]
            config.update({k: TRL_LORA_DEFAULTS[k] for k in unset})
            mapped.append(f"use_peft -> lora_r {config['lora_r']}" + (f" (TRL's default {', '.join(unset)})" if unset else ""))
        else:
            config["lora_r"] = 0
            mapped.append("use_peft false -> lora_r 0 (full fine-tuning)")
    if isinstance(config.get("lora_target_modules"), list):
        config["lora_target_modules"] = ",".join(map(str, config["lora_target_modules"]))
    refused = [k for k in TRL_REFUSED if config.get(k)]
    if refused:
        raise UsageError(path, f"{', '.join(refused)}: not supported by sdpo train (plain LoRA or full fine-tuning "
                         "of a full-precision model); remove them")
    data = [k for k in config if k in theirs and (k.startswith("dataset") or k in TRL_DATA)]
    other = [k for k in config if k in theirs and k not in data]
    for key in data + other:
        config.pop(key)
    from sdpo_kit.console import note

    lines = [f"read trl dpo keys as sdpo settings: {', '.join(mapped)}" if mapped else "",
             f"ignored {', '.join(data)}: the pairs come from --partitions (written by `sdpo curate split`)"
             if data else "",
             f"ignored trl dpo model-loading key(s) {', '.join(other)}: sdpo train loads --model in float32 "
             "(use --bf16 for mixed precision)" if other else ""]
    for line in filter(None, lines):
        note("sdpo train", f"{path}: {line}")
    return config


def _check_values(args) -> None:
    """DPO settings that would train the wrong way or not at all, refused before run.json is written.

    Generic checks (finite floats, seeds in [0, 2**32 - 1]) are the parser's (`sdpo_kit.parser`)."""
    from sdpo_kit.scoring.frame import check_settings

    # The scorer's one check of max_length / truncation_mode (0 = no truncation, TRL's None).
    args.max_length = check_settings(max_length=args.max_length, truncation_mode=args.truncation_mode)
    if not args.beta > 0:  # β <= 0 rewards the rejected answer (or nothing) while eval's margins look fine
        raise UsageError("--beta", f"must be > 0 (the DPO temperature), got {args.beta}")
    if not 0 <= args.label_smoothing < 0.5:  # at 0.5 the loss ignores the preference, above it inverts it
        raise UsageError("--label_smoothing", f"must be in [0, 0.5), got {args.label_smoothing}")
    if not args.learning_rate > 0:
        raise UsageError("--learning_rate", f"must be > 0, got {args.learning_rate}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise UsageError("--max_steps", f"must be >= 1 (or -1: as many as --num_train_epochs give), got {args.max_steps}")
    if args.max_steps == -1 and not args.num_train_epochs > 0:
        raise UsageError("--num_train_epochs", f"must be > 0 (or set --max_steps >= 1), got {args.num_train_epochs}")
    for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name}", f"must be >= 1, got {getattr(args, name)}")
    from sdpo_kit.training.options import check_dpo_options

    check_dpo_options(args)


def trainer_autocast(args) -> str | None:
    """The autocast dtype of the trainer's forward (accelerate's mixed precision), None in float32.

    TRL/accelerate keep float32 master weights and run every forward under `torch.autocast` when
    `--bf16`/`--fp16` is on, on CPU as on GPU (issue 23)."""
    return "bfloat16" if args.bf16 else "float16" if args.fp16 else None


def scorer_config(args):
    """The run's one `ScoreConfig`: max_length/truncation_mode as TRL's collator truncates (after the
    partitions' values were taken, `prepare`), float32 weights under the trainer's autocast (so each step's
    reference is scored as the policy's first forward runs), the run's β. Built once per run and handed to
    every scoring pass of a step: the reference, its check and the end-of-step numbers."""
    from sdpo_kit.scoring.frame import ScoreConfig

    return ScoreConfig(max_length=args.max_length, truncation_mode=args.truncation_mode, dtype="float32",
                       beta=args.beta, autocast=trainer_autocast(args))


def resolved_settings(cfg, args) -> dict:
    """Every setting that decides what a run computes, defaults included, as plain values.

    `sdpo`: StepwiseConfig (the run's own paths are recorded apart); `trl`: every DPOConfig field
    except `output_dir` (set per step).
    """
    sdpo = {f.name: plain_value(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in RUN_KEYS + ("model",)}
    trl = {f.name: plain_value(getattr(args, f.name)) for f in dataclasses.fields(args)
           if f.init and f.name not in ("output_dir",)}
    # Credentials never go into the record (transformers masks them the same way in to_dict).
    trl = {k: (f"<{k.upper()}>" if k.endswith("_token") and v is not None else v) for k, v in trl.items()}
    return {"sdpo": sdpo, "trl": trl}


def plain_value(value):
    """A setting as JSON/YAML can hold it: enums by value, tuples as lists, anything else exotic as str."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, dict, type(None))) else str(value)
