"""Command-line flags and YAML values for dataclass fields.

Why not argparse or `transformers.HfArgumentParser`: argparse silently accepts unambiguous prefixes
(`--block_siz 1024` quietly means `--block_size`), HfArgumentParser cannot layer a YAML file under command-line
flags, and neither suggests the closest valid name for a typo. This module does only what they lack: split argv
into flags, convert strings to each field's annotated type, and name the flag in every error.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import os
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union

from medpt.errors import MedptError

_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
_NONE_WORDS = {"none", "null", "~"}


@dataclass(frozen=True)
class FlagSpec:
    """One flag: a dataclass field seen from the command line."""

    name: str
    section: str
    type: Any
    default: Any
    help: str
    path: bool = False  # it holds paths: `~` is expanded when the value is read (value_of)


def specs_of(cls: type, section: str, exclude: Iterable[str] = ()) -> Iterator[FlagSpec]:
    """The flags of a dataclass, in declaration order, with resolved type hints and defaults."""
    hints = typing.get_type_hints(cls)
    skip = set(exclude)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in skip or f.name.startswith("_"):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        meta = f.metadata
        yield FlagSpec(f.name, section, hints[f.name], default, meta.get("help", ""), bool(meta.get("path")))


def _members(tp: Any) -> tuple[Any, ...]:
    """The alternatives of a Union (`X | None` included), or the type itself."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _is_list(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, tuple) or tp in (list, tuple)


def accepts_list(tp: Any) -> bool:
    return any(_is_list(m) for m in _members(tp))


def is_bool(tp: Any) -> bool:
    return bool in _members(tp)


def _choices(tp: Any) -> tuple[Any, ...]:
    """The values of the Literal alternatives of a type (`Literal["none", "exact"] | bool` → ("none", "exact"))."""
    return tuple(v for m in _members(tp) if typing.get_origin(m) is typing.Literal for v in typing.get_args(m))


def value_of(raw: Any, spec: FlagSpec, flag: str | None = None) -> Any:
    """A flag's value from the command line or a YAML file: converted to its type and, for a path flag, with `~`
    expanded once, here, so the manifest, the files and the saved configuration all see the same real path (the
    shell expands `~` only at the start of a word: not in '~/out', --flag=~/out, NAME=~/data or YAML)."""
    value = convert(raw, spec.type, flag or spec.name)
    return expand_home(value) if spec.path else value


def expand_home(value: Any) -> Any:
    """`~` and `~user` at the start of a path, of each path in a list, and of PATH in NAME=PATH items."""
    if isinstance(value, list):
        return [expand_home(v) for v in value]
    if not isinstance(value, str):
        return value
    name, eq, rest = value.partition("=")
    if eq and name.isidentifier() and rest.startswith("~"):
        return f"{name}={os.path.expanduser(rest)}"
    return os.path.expanduser(value) if value.startswith("~") else value


def convert(value: Any, tp: Any, flag: str) -> Any:
    """Convert a command-line string (or a YAML value, already typed) to `tp`; raise MedptError naming the flag."""
    members = _members(tp)
    if len(members) > 1:
        return _convert_union(value, members, flag)
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        return _convert_choice(value, typing.get_args(tp), flag)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _convert_choice(value, tuple(m.value for m in tp), flag)
    if tp is bool:
        return _convert_bool(value, flag)
    if tp in (int, float):
        return _convert_number(value, tp, flag)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise MedptError(f"--{flag} takes a single string, got {value!r}")
        return str(value)
    if _is_list(tp):
        inner = (typing.get_args(tp) or (Any,))[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        if inner in (int, float):  # numbers given as one comma-separated string: --adapter_scale 0.25,0.5,1
            items = [v for item in items for v in (item.split(",") if isinstance(item, str) else [item]) if v != ""]
        return [convert(v, inner, flag) for v in items]
    if origin is dict or tp is dict:
        return _convert_dict(value, flag)
    if value is None or isinstance(value, tp):
        return value
    raise MedptError(f"--{flag} cannot be set from the command line or YAML (type {type_name(tp)})")


def _convert_union(value: Any, members: tuple[Any, ...], flag: str) -> Any:
    non_none = tuple(m for m in members if m is not type(None))
    if value is None or (isinstance(value, str) and value.lower() in _NONE_WORDS and type(None) in members):
        if type(None) in members:
            return None
        raise MedptError(f"--{flag} cannot be None")
    if len(non_none) == 1:
        return convert(value, non_none[0], flag)
    # Several alternatives (e.g. transformers' `IntervalStrategy | str`, `dict | str`, `None | str | list[str]`):
    # choose by the shape of the value; a plain string stays a string and the library validates it later.
    if isinstance(value, (list, tuple)):
        listy = [m for m in non_none if _is_list(m)]
        if listy:
            return convert(value, listy[0], flag)
        if len(value) == 1:
            value = value[0]
        else:
            raise MedptError(f"--{flag} takes one value, got {len(value)}")
    if isinstance(value, dict) or (isinstance(value, str) and value.lstrip().startswith("{")):
        if any(typing.get_origin(m) is dict or m is dict for m in non_none):
            return _convert_dict(value, flag)
    if bool in non_none and (isinstance(value, bool) or str(value).lower() in _BOOL_WORDS):
        return _convert_bool(value, flag)
    if str in non_none:
        return str(value)
    errors = []
    for m in non_none:
        try:
            return convert(value, m, flag)
        except MedptError as e:
            errors.append(str(e))
    raise MedptError(errors[0] if errors else f"--{flag}: cannot use {value!r}")


def _convert_choice(value: Any, choices: tuple[Any, ...], flag: str) -> Any:
    for c in choices:
        if value == c or str(value) == str(c):
            return c
    hint = closest(str(value), [str(c) for c in choices])
    suggestion = f" (did you mean {hint!r}?)" if hint else ""
    raise MedptError(f"--{flag} must be one of {', '.join(map(str, choices))}; got {value!r}{suggestion}")


def _convert_bool(value: Any, flag: str) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _BOOL_WORDS:
        return _BOOL_WORDS[word]
    raise MedptError(f"--{flag} takes true or false, got {value!r}")


def _convert_number(value: Any, tp: type, flag: str) -> int | float:
    if isinstance(value, bool):
        raise MedptError(f"--{flag} takes a number, got {value!r}")
    try:
        number = float(value) if tp is float else int(str(value).replace("_", ""))
    except (TypeError, ValueError):
        # An int flag given as "1e3" or "512.0" is accepted only when it is a whole number.
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise MedptError(f"--{flag} takes {'a number' if tp is float else 'an integer'}, got {value!r}") from None
        if tp is int and as_float.is_integer():
            return int(as_float)
        raise MedptError(f"--{flag} takes an integer, got {value!r}") from None
    return number


def _convert_dict(value: Any, flag: str) -> dict:
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, json.JSONDecodeError) as e:
        raise MedptError(
            f"--{flag} takes a JSON object, e.g. '{{\"key\": 1}}'; could not parse {value!r}: {e}"
        ) from None
    if not isinstance(parsed, dict):
        raise MedptError(f"--{flag} takes a JSON object, got {value!r}")
    return parsed


def closest(name: str, names: Iterable[str]) -> str | None:
    """The valid name a typo most likely meant, if any is close enough."""
    matches = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6)
    return matches[0] if matches else None


def split_argv(argv: list[str], lookup: Callable[[str], FlagSpec]) -> tuple[list[str], list[tuple[str, Any]]]:
    """Split argv into leading YAML paths and (flag, raw value) pairs, in order.

    `lookup` resolves a flag name to its spec (raising MedptError for unknown names); the spec's type decides
    how many tokens the flag takes: a bool flag takes an optional true/false, a list flag takes every token up to
    the next `--flag`, anything else exactly one token (so `--learning_rate -1` works).
    """
    configs: list[str] = []
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv) and not argv[i].startswith("--"):
        configs.append(argv[i])
        i += 1
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or token == "--":
            raise MedptError(f"unexpected argument {token!r}: flags look like --name value (YAML files come first)")
        name, eq, inline = token[2:].partition("=")
        spec = lookup(name)
        i += 1
        name = spec.name  # the canonical name, if `name` was an alias
        if eq:
            pairs.append((name, inline))
            continue
        if is_bool(spec.type) and not accepts_list(spec.type) and str not in _members(spec.type):
            # a bool that also takes words (`--dedup near`, Literal[...] | bool): the word is its value
            if i < len(argv) and (argv[i].lower() in _BOOL_WORDS or argv[i] in _choices(spec.type)):
                pairs.append((name, argv[i]))
                i += 1
            else:
                pairs.append((name, True))  # a bare boolean flag means "on", as in transformers
            continue
        values = []
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
            if not accepts_list(spec.type):
                break
        if not values:
            raise MedptError(f"--{name} needs a value ({type_name(spec.type)})")
        pairs.append((name, values if accepts_list(spec.type) and len(values) > 1 else values[0]))
    return configs, pairs


def type_name(tp: Any) -> str:
    """A short human name for a type, used in --help and errors."""
    members = _members(tp)
    if len(members) > 1:
        return " | ".join(type_name(m) for m in members if m is not type(None)) + (
            " | None" if type(None) in members else ""
        )
    if typing.get_origin(tp) is Literal:
        return "{" + ",".join(map(str, typing.get_args(tp))) + "}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "{" + ",".join(str(m.value) for m in tp) + "}"
    if _is_list(tp):
        inner = typing.get_args(tp)
        return f"list[{type_name(inner[0]) if inner else 'str'}]"
    return getattr(tp, "__name__", str(tp))


def format_help(sections: list[tuple[str, list[FlagSpec]]]) -> str:
    """Help text generated from the schema: one line per flag with its type, default and description."""
    lines = []
    for title, specs in sections:
        lines.append(f"\n{title}:")
        for s in specs:
            default = "" if s.default in (None, "", [], {}) else f" (default: {s.default})"
            lines.append(f"  --{s.name} {type_name(s.type)}{default}")
            if s.help:
                lines.append(f"      {s.help.strip().splitlines()[0]}")
    return "\n".join(lines)
