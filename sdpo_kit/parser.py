"""The one parser of every `sdpo` command: config dataclasses -> flags, `--config` YAML and help.

    sdpo curate split --config configs/curate_split.yaml --steps 2   # a flag overrides the YAML
    sdpo curate split --help                                         # every option (-h is the same)

A command is one or more dataclasses plus `run(*configs)` in the module that does the work
(`sdpo_kit.cli.COMMANDS`); the first dataclass's docstring is the command's help. A field's name is
its YAML key and its flag, spelled as `HfArgumentParser` does (`--max_length` and `--max-length`; a
bool is `--x` / `--no_x`, and `--x true|false` works too); its help is `metadata["help"]`, and
`metadata["positional"]` makes it a positional argument (a list field takes several). Unknown flags
and YAML keys, YAML values of the wrong type and missing values are each one `UsageError` line with
a "did you mean". `sdpo train` runs the same steps over TRL's parser (`sdpo_kit.training.config`).
Nothing here imports torch, transformers or trl.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import enum
import math
import types
import typing

from sdpo_kit.errors import SdpoError, UsageError
from sdpo_kit.yaml_config import read_yaml

HELP = ("-h", "--help")
SEED_MAX = 2**32 - 1  # numpy, torch and sklearn all take seeds in [0, 2**32 - 1]
BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED = _Required()  # the argparse default of a field that has none


def hints(classes) -> dict:
    """Field name -> resolved type annotation, over all `classes` (an unresolvable class is skipped)."""
    out = {}
    for cls in classes:
        try:
            out.update(typing.get_type_hints(cls))
        except Exception:
            continue
    return out


def _unwrap(tp):
    """(the type inside Optional[...], whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), len(args) < len(typing.get_args(tp))
    return tp, False


def _scalar(tp, optional: bool):
    def convert(text: str):
        if optional and text.lower() in ("none", "null"):
            return None
        if tp is bool:
            if text.lower() not in BOOLS:
                raise ValueError(text)
            return BOOLS[text.lower()]
        return tp(text)

    convert.__name__ = getattr(tp, "__name__", "value")  # argparse: "invalid int value: 'x'"
    return convert


def _is_list(tp) -> bool:
    return tp in (list, tuple) or typing.get_origin(tp) in (list, tuple)


def _as_list(value, tp):
    """A list field's value: YAML list, repeated flag values or comma-separated text, converted."""
    if value is None or value is REQUIRED:
        return value
    elem = next((a for a in typing.get_args(tp) if a is not Ellipsis), str)
    items = [value] if isinstance(value, str) else list(value)
    if elem not in (int, float):  # text items (paths) are never split: a comma is a valid character
        return items
    split = [p for v in items for p in (v.split(",") if isinstance(v, str) else [v])]
    return [elem(v.strip()) if isinstance(v, str) else v for v in split if not isinstance(v, str) or v.strip()]


def _fields(cls):
    return [f for f in dataclasses.fields(cls) if f.init]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):
        if action.default is REQUIRED:
            return f"{action.help} (required)"
        return action.help if action.default is None else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse over the fields of `classes`, with TrlParser's two methods (so `parse` drives both)."""

    def __init__(self, prog: str, classes):
        doc = (classes[0].__doc__ or "").strip()
        super().__init__(prog=prog, description=doc, allow_abbrev=False, add_help=False,
                         formatter_class=_Formatter)
        self.classes, self.types = list(classes), hints(classes)
        add_common(self)
        for cls in classes:
            for f in _fields(cls):
                self._add(f, self.types.get(f.name, str))
        for cls in classes:  # a command's own default for another class's field (curate score's token_budget)
            self.set_defaults(**getattr(cls, "cli_defaults", {}))

    def _add(self, f, tp) -> None:
        base, optional = _unwrap(tp)
        default = (f.default if f.default is not dataclasses.MISSING else f.default_factory()
                   if f.default_factory is not dataclasses.MISSING else REQUIRED)
        kw = {"help": f.metadata.get("help", ""), "default": default}
        if f.metadata.get("positional"):
            self.add_argument(f.name, nargs="*" if _is_list(base) else "?", metavar=f.name.upper(), **kw)
            return
        names = dict.fromkeys([f"--{f.name}", f"--{f.name.replace('_', '-')}"])
        if base is bool:
            self.add_argument(*names, dest=f.name, action="store_true", **kw)
            self.add_argument(*dict.fromkeys([f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}"]), dest=f.name,
                              action="store_false", default=argparse.SUPPRESS,  # listed where it changes something
                              help=f"Turn off --{f.name}." if default is True else argparse.SUPPRESS)
        elif _is_list(base):
            self.add_argument(*names, dest=f.name, nargs="+", metavar=f.name.upper(), **kw)
        elif typing.get_origin(base) is typing.Literal:
            self.add_argument(*names, dest=f.name, choices=typing.get_args(base), **kw)
        else:
            self.add_argument(*names, dest=f.name, type=_scalar(base, optional), metavar=f.name.upper(), **kw)

    def error(self, message):  # argparse would print the usage and exit
        raise UsageError(self.prog, f"{message} (`{self.prog} --help` lists every option)")

    def set_defaults_with_config(self, **config) -> list[str]:
        self.set_defaults(**config)
        return []

    def parse_args_into_dataclasses(self, args: list[str]):
        ns = vars(self.parse_intermixed_args(_bool_words(self, args)))
        out = []
        for cls in self.classes:
            values = {f.name: ns[f.name] for f in _fields(cls)}
            for name, value in values.items():
                if value is REQUIRED:
                    action = next(a for a in self._actions if a.dest == name)
                    what = "/".join(action.option_strings[:1]) or name.upper()
                    raise UsageError(self.prog, f"{what} is required: {action.help}")
                if _is_list(_unwrap(self.types.get(name))[0]):
                    try:
                        values[name] = _as_list(value, _unwrap(self.types[name])[0])
                    except ValueError:
                        raise UsageError(self.prog, f"--{name} {value!r}: expected a list of numbers, e.g. "
                                         "0.5,0.3,0.2") from None
            check_numbers(values, cls)  # before __post_init__ compares a NaN
            out.append(cls(**values))
        return tuple(out)


def number_problem(name: str, value, tp, metadata) -> str | None:
    """What is wrong with a numeric setting, or None: a float must be finite (unless the field's
    metadata says `non_finite: True`), an int finite, and a field named `*seed` in [0, 2**32 - 1]."""
    base = _unwrap(tp)[0]
    if value is None or isinstance(value, bool):
        return None
    if _is_list(base):
        elem = next((a for a in typing.get_args(base) if a is not Ellipsis), None)
        values = value if isinstance(value, (list, tuple)) else [value]
        return next((p for v in values if (p := number_problem(name, v, elem, metadata))), None)
    if base not in (int, float) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value) and not (base is float and metadata.get("non_finite")):
        return f"must be a finite number, got {value}"
    if base is int and name.endswith("seed") and not 0 <= value <= SEED_MAX:
        return f"a seed must be in [0, {SEED_MAX}] (2**32 - 1), got {value}"
    return None


def check_numbers(values: dict, cls, where: str | None = None) -> None:
    """`number_problem` over a config's `{field: value}` (flags, or YAML keys when `where` names the
    file): one UsageError line naming the flag. The one generic check of every command's numbers."""
    types_ = hints([cls])
    for f in _fields(cls):
        if f.name in values and (problem := number_problem(f.name, values[f.name], types_.get(f.name), f.metadata)):
            raise UsageError(f"{where}: {f.name}" if where else f"--{f.name}", problem)


def add_common(parser) -> None:
    """--config and -h/--help, listed with every command's options."""
    parser.add_argument("--config", metavar="YAML", default=argparse.SUPPRESS,
                        help="YAML file of `field: value` (the flag names without --); flags override it.")
    parser.add_argument(*HELP, action="store_true", default=argparse.SUPPRESS, help="Show every option and exit.")


def _bool_words(parser, argv: list[str]) -> list[str]:
    """`--x true|false` and `--x=false` as argparse's `--x` / `--no_x`."""
    out, i = [], 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        action = parser._option_string_actions.get(flag)
        if action is not None and isinstance(action, argparse._StoreTrueAction):
            if not eq and i + 1 < len(argv) and argv[i + 1].lower() in BOOLS:
                value, i = argv[i + 1], i + 1
            if value and value.lower() not in BOOLS:
                raise UsageError(parser.prog, f"{flag}: expected true or false, got {value!r}")
            out.append(flag if not value or BOOLS[value.lower()] else f"--no_{action.dest}")
        else:
            out.append(argv[i])
        i += 1
    return out


def check_flags(parser, argv: list[str]) -> None:
    """Unknown `--flags` in one line, with the closest known spellings ("did you mean ...")."""
    known = [o for o, a in parser._option_string_actions.items() if o.startswith("--") and a.help != argparse.SUPPRESS]
    for token in argv:
        flag = token.split("=", 1)[0]
        if token == "--":
            return
        if token.startswith("--") and flag not in parser._option_string_actions:
            style = [o for o in known if ("-" in o[2:]) == ("-" in flag[2:])] or known
            close = difflib.get_close_matches(flag, style, n=2, cutoff=0.75)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise UsageError(parser.prog, f"unknown flag {flag}{hint} (`{parser.prog} --help` lists every option)")


def check_keys(config: dict, classes, path, prog: str, extra: tuple[str, ...] = ()) -> dict:
    """Unknown keys (did you mean ...) and values of the wrong type are UsageErrors; `no_x: true` is `x: false`."""
    types_ = hints(classes)
    names = [f.name for cls in classes for f in _fields(cls)]
    config = dict(config)
    for key in [k for k in config if isinstance(k, str) and k.startswith("no_") and types_.get(k[3:]) is bool]:
        config[key[3:]] = not config.pop(key)
    unknown = [str(k) for k in config if k not in names and k not in extra]
    if unknown:
        hints_ = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, names, n=1)) else k
                  for k in unknown]
        raise UsageError(path, f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints_)}; "
                         f"`{prog} --help` lists every option")
    for key, value in config.items():
        if key in types_ and _fits(value, types_[key]) is False:
            raise UsageError(path, f"{key}: expected {_type_name(types_[key])}, got {value!r}")
    for cls in classes:
        check_numbers(config, cls, where=str(path))
    return config


def _fits(value, tp) -> bool | None:
    """Whether a YAML value suits the annotation `tp`; None when the annotation is not understood."""
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
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (tp is float or math.isfinite(value) and value == int(value)))  # .inf for an int: refused
    if tp is str:
        return isinstance(value, str)
    if _is_list(tp):
        return isinstance(value, (list, str))  # a list, or comma-separated text
    if origin is dict or tp is dict:
        return isinstance(value, (dict, str))  # transformers also takes a JSON string
    if origin is typing.Literal:
        return value in targs
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, (str, tp))
    return None


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def split_config(argv: list[str]) -> tuple[list[str], str | None]:
    """argv without `--config FILE` (or `--config=FILE`), and FILE."""
    for i, token in enumerate(argv):
        if token == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config", "needs a YAML file")
            return argv[:i] + argv[i + 2:], argv[i + 1]
        if token.startswith("--config="):
            return argv[:i] + argv[i + 1:], token.split("=", 1)[1]
    return list(argv), None


def given_flags(parser, argv: list[str]) -> set[str]:
    """Field names set by a flag on the command line."""
    return {parser._option_string_actions[t.split("=", 1)[0]].dest for t in argv
            if t.startswith("--") and t.split("=", 1)[0] in parser._option_string_actions}


def wants_help(argv: list[str]) -> bool:
    return any(a in HELP for a in argv[: argv.index("--") if "--" in argv else len(argv)])


def parse_flags(parser, argv: list[str], *, map_yaml=None, extra_keys: tuple[str, ...] = ()):
    """`(configs, given)` from flags over an optional `--config` YAML; None after printing the help.

    `parser`: a `Parser` or a TrlParser-like one (`classes`, `prog`); `map_yaml(config, path)` turns
    another tool's keys into ours first (train: `trl dpo` files). `given`: the fields the user set.
    """
    if wants_help(argv):
        print(parser.format_help())
        return None
    check_flags(parser, argv)
    argv, path = split_config(argv)
    config = read_yaml(path, parser.prog) if path else {}
    if map_yaml is not None:
        config = map_yaml(config, path)
    config = check_keys(config, parser.classes, path, parser.prog, extra_keys)
    parser.set_defaults_with_config(**{k: v for k, v in config.items() if k not in extra_keys})
    try:
        configs = parser.parse_args_into_dataclasses(args=argv)
    except (ValueError, TypeError) as err:  # a dataclass' own check of a value
        if isinstance(err, SdpoError):
            raise
        raise UsageError(parser.prog, " ".join(str(err).split())) from None
    for cfg in configs:  # TRL's parser builds DPOConfig itself: its numbers are checked here
        check_numbers({f.name: getattr(cfg, f.name) for f in _fields(type(cfg))}, type(cfg))
    return list(configs), given_flags(parser, argv) | set(config) - set(extra_keys)


def _attr(path: str):
    """The object named by "module:name"."""
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def load(spec):
    """(module, [config classes]) of a `sdpo_kit.cli.COMMANDS` entry (its "module:Config[,Config]")."""
    import importlib

    configs = getattr(spec, "configs", spec)
    module = importlib.import_module(configs.partition(":")[0])
    return module, [getattr(module, c) for c in configs.partition(":")[2].split(",")]


def parse_run_args(prog: str, classes, argv: list[str]):
    """The generic parser of the registry: the configs `run(*configs)` takes, or None after --help."""
    parsed = parse_flags(Parser(prog, classes), argv)
    return None if parsed is None else parsed[0]


def run_command(prog: str, spec, argv: list[str]) -> None:
    """Parse `argv` with the command's registered parser (or print its --help) and call its module's `run`.

    `spec` is a `sdpo_kit.cli.Command`: its configs and the parser that turns argv into `run`'s
    arguments (the configs; train's adds the settings the user set, which guard `--resume`)."""
    module, classes = load(spec)
    arguments = _attr(spec.parser)(prog, classes, argv)
    if arguments is not None:
        module.run(*arguments)
