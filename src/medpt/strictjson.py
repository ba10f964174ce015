"""Every JSON medpt writes (results, reports, manifests, metrics, predictions, cache metadata) is strict JSON
(RFC 8259), readable by any parser.

Python's json writes a NaN or an infinite float as the bare words NaN / Infinity / -Infinity, which are not JSON:
JavaScript's JSON.parse, jq, Go's encoding/json and serde reject the whole file. A diverged loss, an eval set with
no scored tokens, a base model whose fp16 logits overflow or a CI with too few items produce exactly those values,
so medpt writes each of them as null ("no finite value"), and readers of medpt's files treat null as not measured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float (NaN, inf, -inf) replaced by None, inside dicts, lists and tuples too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(
    value: Any,
    *,
    indent: int | None = None,
    ensure_ascii: bool = True,
    sort_keys: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> str:
    """json.dumps, strict: non-finite floats become null, and allow_nan=False makes any that got past `finite`
    (one returned by `default`) an error instead of a bare NaN in a file."""
    return json.dumps(
        finite(value), indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys, default=default, allow_nan=False
    )
