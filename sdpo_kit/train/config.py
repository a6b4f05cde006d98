"""`sdpo train`'s settings: `StepwiseConfig`, the flag/YAML parser over it and `trl.DPOConfig`, and
the settings a run records and `--resume` restores.

    sdpo train --fields        # every flag this parser knows
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path

from sdpo_kit.errors import UsageError

MODES = ("stepwise", "dpo")
ORDERS = ("shuffled", "sequential")
# Flags that name the run rather than change what it computes: a resume may always pass them.
RUN_KEYS = ("partitions", "out", "resume", "config")

@dataclass
class StepwiseConfig:
    """Stepwise settings; the `trl.DPOConfig` fields travel beside it (see `parse_train_args`)."""

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


def _check_schedule(cfg) -> None:
    from sdpo_kit.train.reference import SCHEDULES

    if cfg.reference_schedule not in SCHEDULES:
        raise UsageError(f"--reference-schedule must be one of {SCHEDULES}, got {cfg.reference_schedule!r}.")
    if not 0.0 <= cfg.ref_mix_alpha <= 1.0:
        raise UsageError(f"--ref-mix-alpha must be in [0, 1], got {cfg.ref_mix_alpha}.")

def train_parser():
    """StepwiseConfig + trl.DPOConfig flags; a bad flag raises `UsageError` (one line), never argparse's exit."""
    import torch
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message):  # argparse would print the whole usage and exit
            raise UsageError(f"sdpo train: {message} (`sdpo train --fields` lists every flag)")

    parser = Parser((StepwiseConfig, _dpo_config()), allow_abbrev=False)  # --learning_rat is a typo, not a prefix
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


def parse_train_args(argv: list[str]):
    """`(StepwiseConfig, DPOConfig, overrides)` from flags and an optional `--config` YAML.

    `overrides` holds the DPOConfig values that differ from our defaults (for config.yaml).
    Every problem with the flags or the YAML raises `UsageError` in one line.
    """
    parser = train_parser()
    _check_flags(parser, argv)
    _read_yaml_config(argv)
    try:
        cfg, args = parser.parse_args_and_config(argv)
    except (ValueError, TypeError) as err:
        if isinstance(err, UsageError):
            raise
        raise UsageError("sdpo train", " ".join(str(err).split())) from None
    _check_values(args)
    overrides = _overrides(args)
    _finish(cfg, args)
    return cfg, args, overrides


def _overrides(args) -> dict:
    base = train_parser().parse_args_into_dataclasses(["--partitions", "x", "--out", "x"])[1]
    return {
        f.name: _plain(getattr(args, f.name))
        for f in dataclasses.fields(args)
        if f.init and f.name != "output_dir" and getattr(args, f.name) != getattr(base, f.name)
    }


def _finish(cfg, args) -> None:
    args.precompute_ref_log_probs = True  # the reference is always the scorer's, never a live model
    if cfg.order == "sequential":
        args.train_sampling_strategy = "sequential"  # transformers' public, order-preserving sampler


def _check_flags(parser, argv: list[str]) -> None:
    """Unknown `--flags` in one line, with the closest known names ("did you mean ...")."""
    import difflib

    known = [o for o in parser._option_string_actions if o.startswith("--") and "-" not in o[2:]]
    for token in argv:
        flag = token.split("=", 1)[0]
        if token.startswith("--") and flag not in parser._option_string_actions and flag != "--config":
            close = difflib.get_close_matches(flag, known, n=3, cutoff=0.75)
            hint = f"; did you mean {' or '.join(close)}?" if close else "; `sdpo train --fields` lists every flag"
            raise UsageError("sdpo train", f"unknown flag {flag}{hint}")


def _read_yaml_config(argv: list[str]) -> dict:
    """The `--config` YAML as a mapping ({} without one); malformed YAML is a UsageError."""
    import yaml

    if "--config" not in argv:
        return {}
    i = argv.index("--config")
    if i + 1 >= len(argv):
        raise UsageError("sdpo train", "--config needs a YAML file")
    path = Path(argv[i + 1])
    if not path.is_file():
        raise UsageError(f"--config {path}", "no such file")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UsageError(path, f"{where}not valid YAML ({getattr(err, 'problem', None) or err})") from None
    except UnicodeDecodeError:
        raise UsageError(path, "not a UTF-8 text file") from None
    if not isinstance(config, dict):
        raise UsageError(path, f"must hold a YAML mapping of flag: value, got {type(config).__name__}")
    fields = {f.name for dc in (StepwiseConfig, _dpo_config()) for f in dataclasses.fields(dc) if f.init}
    unknown = sorted(k for k in config if k not in fields and k != "env")
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {difflib.get_close_matches(str(k), fields, n=1)[0]}?)"
                 if difflib.get_close_matches(str(k), fields, n=1) else str(k) for k in unknown]
        raise UsageError(path, f"unknown key(s) {', '.join(hints)}; `sdpo train --fields` lists them")
    _check_types(config, path)
    return config


def _check_types(config: dict, path: Path) -> None:
    """A YAML value of the wrong kind (`beta: [1, 2]`) is a UsageError naming the key."""
    import typing

    hints = {}
    for dc in (StepwiseConfig, _dpo_config()):
        try:
            hints.update(typing.get_type_hints(dc))
        except Exception:  # an unresolvable annotation: that class is not checked
            continue
    for key, value in config.items():
        if key in hints and _fits(value, hints[key]) is False:
            raise UsageError(path, f"{key}: expected {_type_name(hints[key])}, got {value!r}")


def _fits(value, tp) -> bool | None:
    """Whether a YAML value suits the annotation `tp`; None when the annotation is not understood."""
    import enum
    import types
    import typing

    origin, targs = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        verdicts = [_fits(value, a) for a in targs]
        return True if any(verdicts) else (None if None in verdicts else False)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp in (int, float):  # argparse converts a string default ("1e-3": YAML 1.1 reads it as a string)
        if isinstance(value, str):
            try:
                return bool(tp(value)) or True
            except ValueError:
                return False
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (tp is float or value == int(value))
    if tp is str:
        return isinstance(value, str)
    if origin is list or tp is list:
        return isinstance(value, list)
    if origin is dict or tp is dict:
        return isinstance(value, (dict, str))  # transformers also takes a JSON string
    if origin is typing.Literal:
        return value in targs
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, (str, tp))
    return None


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _check_values(args) -> None:
    if args.max_length is not None and args.max_length < 2:
        raise UsageError("--max_length", f"must be >= 2 tokens (a prompt token and a completion token), "
                         f"got {args.max_length}")
    if args.truncation_mode not in ("keep_start", "keep_end"):
        raise UsageError("--truncation_mode", f"must be keep_start or keep_end, got {args.truncation_mode!r}")


def given_keys(argv: list[str]) -> set[str]:
    """Field names the user set on the command line or in the `--config` YAML (defaults excluded)."""
    parser = train_parser()
    given = {parser._option_string_actions[t.split("=", 1)[0]].dest for t in argv
             if t.startswith("--") and t.split("=", 1)[0] in parser._option_string_actions}
    return (given | set(_read_yaml_config(argv))) - {"env"}


def resolved_settings(cfg, args) -> dict:
    """Every setting that decides what a run computes, defaults included, as plain values.

    `sdpo`: StepwiseConfig (the run's own paths are recorded apart); `trl`: every DPOConfig field
    except `output_dir` (set per step).
    """
    sdpo = {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg) if f.name not in RUN_KEYS + ("model",)}
    trl = {f.name: _plain(getattr(args, f.name)) for f in dataclasses.fields(args)
           if f.init and f.name not in ("output_dir",)}
    # Credentials never go into the record (transformers masks them the same way in to_dict).
    trl = {k: (f"<{k.upper()}>" if k.endswith("_token") and v is not None else v) for k, v in trl.items()}
    return {"sdpo": sdpo, "trl": trl}


def _plain(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool, dict, type(None))) else str(value)
