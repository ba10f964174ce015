"""How a flag is declared (`_arg`: default, help, range, which commands take it) and checked."""

from __future__ import annotations

import math
from dataclasses import field, fields
from typing import Any

from medpt.errors import MedptError

TEMPLATES = ("qa_separator", "qa", "chat_template", "custom")
# An upper bound for --block_size that holds whatever the model: above it, three copies of a batch's logits no longer
# fit in any machine's memory. The model's own limit (max_position_embeddings) is checked when it is known.
MAX_BLOCK_SIZE = 1 << 20
# The default largest record, in MiB of text (--max_record_mb; the reasons are in medpt.data.records).
MAX_RECORD_MB = 16.0
_TRAIN = ("train", "tune")  # `medpt tune` runs `medpt train` once per trial: it takes the same flags


def _arg(
    default: Any = None,
    help: str = "",
    factory: Any = None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    only: tuple[str, ...] | None = None,
    path: bool | str = False,
    secret: bool = False,
) -> Any:
    """A field with its help, range (ge/gt/le/lt), the commands that use it (`only`), whether it holds paths (a
    string: the path is an input the command reads, and says what it is; no output may be, hold or sit inside it),
    and whether it is a secret (never printed: --dry_run shows it as set or not)."""
    meta = {"help": help, "range": (ge, gt, le, lt), "only": only, "path": path, "secret": secret}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def check_range(name: str, value: Any, bounds: tuple[float | None, ...]) -> None:
    """One message shape for every numeric flag: what it must be, and what it got."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    ge, gt, le, lt = bounds
    if isinstance(value, float) and math.isnan(value):
        raise MedptError(f"--{name} must be a number, got nan")
    low, high = (ge, "[") if ge is not None else (gt, "("), (le, "]") if le is not None else (lt, ")")
    if isinstance(value, float) and low[0] is not None and high[0] is not None:  # a fraction or percentage
        inside = (value >= ge if ge is not None else value > gt) and (value <= le if le is not None else value < lt)
        if not inside:
            raise MedptError(f"--{name} must be in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}, got {value:g}")
        return
    if ge is not None and value < ge:
        raise MedptError(f"--{name} must be at least {_num(ge)}, got {_num(value)}")
    if gt is not None and value <= gt:
        raise MedptError(f"--{name} must be greater than {_num(gt)}, got {_num(value)}")
    if le is not None and value > le:
        raise MedptError(f"--{name} must be at most {_num(le)}, got {_num(value)}")
    if lt is not None and value >= lt:
        raise MedptError(f"--{name} must be less than {_num(lt)}, got {_num(value)}")


def _num(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) or float(x).is_integer() and abs(x) >= 1000 else f"{x:g}"


def _check_ranges(section: Any) -> None:
    for f in fields(section):
        bounds = f.metadata.get("range")
        if bounds and any(b is not None for b in bounds):
            check_range(f.name, getattr(section, f.name), bounds)


def _check_named(flag: str, items: list[str] | None, example: str) -> None:
    """NAME=PATH items: NAME an identifier (it becomes a key and a file name), PATH not empty, names unique."""
    names = []
    for item in items or []:
        name, eq, path = item.partition("=")
        if not eq or not name.isidentifier() or not path:
            raise MedptError(f"--{flag} takes NAME=PATH items (e.g. {example}), got {item!r}")
        if name in names:
            raise MedptError(f"--{flag}: the name {name!r} is given twice")
        names.append(name)


def _comma_list(values: list[str] | None) -> list[str] | None:
    """`a,b c` → [a, b, c]: list flags take spaces (argv) and commas (MedicalGPT, YAML strings) alike."""
    if values is None:
        return None
    return [part.strip() for v in values for part in str(v).split(",") if part.strip()]


_PREPARING = ("prepare", "train")
