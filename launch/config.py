"""Command-line flags generated from one config dataclass, with YAML config files.

Precedence: dataclass defaults < ``--config run.yaml`` < command line. Field ``mask_ratio`` is flag ``--mask-ratio``;
its help text is the field's ``metadata["help"]``. Unknown YAML keys and values of the wrong type are errors
(`common.errors.UserError`: one line, exit code 2), never silently ignored.

Supported field types: bool (``--flag`` / ``--no-flag``), int, float, str, their ``| None`` forms, tuples of
int/float/str (``--betas 0.9 0.95``), and ``Literal``-like choices given in ``metadata["choices"]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import types
import typing
from typing import Any

import yaml

from common.errors import UserError


def field(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - "help" reads best at the call site
    """A dataclass field with help text (and optional ``choices=...``)."""
    metadata = {"help": help}
    if "choices" in kw:
        metadata["choices"] = tuple(kw.pop("choices"))
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kw)
    return dataclasses.field(default=default, metadata=metadata, **kw)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(type without ``| None``, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_scalar(tp: Any, text: str, listed: bool = False) -> Any:
    """One flag value (``listed``: one of a list flag's values): argparse turns the ArgumentTypeError into
    ``argument --flag: expected ..., got ...``, exit 2."""
    if tp is str:
        return text
    try:
        value = tp(text)
    except ValueError:
        kind = "an integer" if tp is int else "a number"
        hint = " (give several values separated by spaces)" if listed and "," in text else ""
        raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}{hint}") from None
    if tp is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Check and convert a YAML value for field ``name`` of type ``tp``."""
    base, optional = _base_type(tp)
    if value is None:
        if optional:
            return None
        raise UserError(f"config key {name!r} may not be null")
    if typing.get_origin(base) is tuple:
        (elem, *_rest) = typing.get_args(base)
        if not isinstance(value, list | tuple):
            raise UserError(f"config key {name!r} needs a list, got {value!r}")
        return tuple(_coerce(name, elem, v) for v in value)
    if base is bool:
        if not isinstance(value, bool):
            raise UserError(f"config key {name!r} needs true or false, got {value!r}")
        return value
    if base is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            number = float(value)  # a string too: YAML 1.1 reads 1e-3 (no dot) as one
        except ValueError:
            number = None
        if number is not None and math.isfinite(number):
            return number
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    raise UserError(f"config key {name!r} needs a {getattr(base, '__name__', base)}, got {value!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of ``cls``; defaults are left unset (None) so that YAML values can sit underneath."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats help
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(flag_name(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0]
            parser.add_argument(flag_name(f.name), nargs="+", type=lambda s, e=elem: _parse_scalar(e, s, True), **kw)
        else:
            parser.add_argument(flag_name(f.name), type=lambda s, t=tp: _parse_scalar(t, s), **kw)


def load_yaml(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"--config {path} does not exist; give a YAML file of flag values (keys like mask_ratio)")
    with open(path) as fh:
        try:
            data = yaml.safe_load(fh) or {}
        except yaml.YAMLError as err:
            raise UserError(f"--config {path} is not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def build_config(cls: type, args: argparse.Namespace, yaml_path: str | None = None) -> Any:
    """Defaults < YAML < flags. YAML keys may use ``mask_ratio`` or ``mask-ratio``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if yaml_path:
        for key, value in load_yaml(yaml_path).items():
            name = str(key).replace("-", "_")
            if name not in names:
                meant = probably_meant(flag_name(name), [flag_name(n) for n in names])
                hint = f" (did you mean {meant[2:].replace('-', '_')}?)" if meant else ""
                raise UserError(f"--config {yaml_path}: unknown key {key!r}{hint}; see --help for the valid flags")
            values[name] = _coerce(name, hints[name], value)
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = tuple(value) if isinstance(value, list) else value
    for f in dataclasses.fields(cls):
        if "choices" in f.metadata and f.name in values and values[f.name] not in f.metadata["choices"]:
            raise UserError(f"{flag_name(f.name)} {values[f.name]!r} is not one of {f.metadata['choices']}")
    return cls(**values)


# Learning-rate flags of other tools (official VideoMAE: --lr absolute, --blr per 256 clips). Without abbreviations
# (below) they are unknown flags; this names the flag that is meant.
FOREIGN_FLAGS = {"--lr": "--base-lr", "--blr": "--base-lr", "--learning-rate": "--base-lr"}


def new_parser(**kwargs: Any) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` that takes only whole flag names. argparse's default accepts any unique prefix, so
    ``--lr 1e-3`` (official VideoMAE's flag) would silently set ``--lr-steps``, and a flag added later could change
    what an old command line means."""
    return argparse.ArgumentParser(allow_abbrev=False, **kwargs)


def unknown_flags_message(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    """``unrecognized arguments: ...`` with the flag probably meant for the first unknown one."""
    message = f"unrecognized arguments: {' '.join(unknown)}"
    flag = next((u.split("=", 1)[0] for u in unknown if u.startswith("--")), None)
    if flag is None:
        return message
    known = [s for action in parser._actions for s in action.option_strings if s.startswith("--")]
    meant = probably_meant(flag, known)
    if meant and flag in FOREIGN_FLAGS:
        return (f"{message} (the learning rate is {meant}, per 256 clips of global batch: "
                "lr = base lr x global batch / 256)")
    return f"{message} (did you mean {meant}?)" if meant else message


def probably_meant(flag: str, known: list[str]) -> str | None:
    """The flag of ``known`` that ``flag`` (``--name``) probably stands for: another tool's name for it
    (`FOREIGN_FLAGS`), the same with hyphens for underscores, or the closest spelling; None if none is close."""
    if FOREIGN_FLAGS.get(flag) in known:
        return FOREIGN_FLAGS[flag]
    hyphens = flag.replace("_", "-")
    match = [hyphens] if hyphens in known else difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
    return match[0] if match else None


def parse(cls: type, argv: list[str] | None = None, *, prog: str | None = None, description: str = "") -> Any:
    """Parse ``argv`` into a ``cls`` instance (flags from fields, plus ``--config FILE``)."""
    parser = new_parser(prog=prog, description=description)
    parser.add_argument("--config", default=None, help="YAML file of defaults; the command line wins")
    add_dataclass_arguments(parser, cls)
    args, unknown = parser.parse_known_args(argv)
    # The deepspeed launcher appends --local_rank=N; the rank is read from the environment instead.
    unknown = [a for a in unknown if not a.startswith("--local_rank") and not a.startswith("--local-rank")]
    if unknown:
        parser.error(unknown_flags_message(parser, unknown))
    return build_config(cls, args, args.config)


def to_dict(cfg: Any) -> dict:
    """Plain data (lists, not tuples) for YAML/JSON and checkpoints."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def dump_yaml(cfg: Any, path: str) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)


def write_run_files(output_dir: str, cfg: Any, ds_config: dict, derived: Any, extra: dict | None = None) -> None:
    """The run folder's record of a run (rank 0 only): ``config.yaml`` (the resolved flags), ``ds_config.json`` and
    ``derived.json`` (the values computed from them: global batch, lr, steps, ..., and ``extra``: FLOPs per clip)."""
    from common.files import atomic_write_text

    os.makedirs(output_dir, exist_ok=True)
    dump_yaml(cfg, os.path.join(output_dir, "config.yaml"))
    atomic_write_text(os.path.join(output_dir, "ds_config.json"), json.dumps(ds_config, indent=2) + "\n")
    values = {**dataclasses.asdict(derived), **(extra or {})}
    atomic_write_text(os.path.join(output_dir, "derived.json"), json.dumps(values, indent=2) + "\n")
