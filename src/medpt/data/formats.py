"""Record shapes (ShareGPT, OpenAI messages, Alpaca, plain text) turned into one `Document` type.

A conversation becomes a list of (role, text) turns with roles system / human / gpt; plain text stays text.
Every violation names its field (`conversations[2].from`), and keys this code does not use are reported by name,
so nothing is dropped without a count.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from medpt.data.records import Record

ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt", "system": "system"}
FORMATS = ("sharegpt", "messages", "alpaca", "text")


@dataclass
class Document:
    turns: list[tuple[str, str]] | None = None  # (role, text), role in system / human / gpt
    text: str | None = None  # for plain-text records
    ignored: tuple[str, ...] = field(default=())  # top-level keys of the record that were not used

    def is_empty(self) -> bool:
        # `not t or t.isspace()` is `not t.strip()` without copying every turn.
        if self.turns is None:
            return not self.text or self.text.isspace()
        return all(not t or t.isspace() for _, t in self.turns)

    @property
    def split_key(self) -> str:
        """What decides a document's train/validation bucket: its first question, so an identical question
        asked twice (with different answers) never lands on both sides of the split."""
        if self.turns is None:
            return self.text or ""
        return next((t for r, t in self.turns if r == "human"), self.turns[0][1] if self.turns else "")


def detect_format(record: Record) -> str:
    value = record.value
    if not isinstance(value, dict):
        raise record.bad(None, f"expected a JSON object per record, got {type(value).__name__}")
    if "conversations" in value:
        return "sharegpt"
    if "messages" in value:
        return "messages"
    if "instruction" in value and "output" in value:
        return "alpaca"
    if "text" in value:
        return "text"
    raise record.bad(
        None,
        f"cannot tell the record shape from its keys {sorted(value)[:8]}; expected 'conversations' (ShareGPT), "
        "'messages', 'instruction'+'output' (Alpaca) or 'text', or set --data_format",
    )


def to_document(record: Record, fmt: str) -> Document:
    value = record.value
    if not isinstance(value, dict):
        raise record.bad(None, f"expected a JSON object per record, got {type(value).__name__}")
    return _CONVERTERS[fmt](record, value)


def _string(record: Record, value: object, field_name: str, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise record.bad(field_name, f"expected a string, got {type(value).__name__} ({str(value)[:40]!r})")
    return value


def _require(record: Record, value: dict, key: str, fmt: str) -> object:
    if key not in value:
        raise record.bad(key, f"missing; a {fmt} record needs it (keys present: {sorted(value)[:8]})")
    return value[key]


def _turn_list(record: Record, value: dict, key: str, role_key: str, text_key: str) -> list[tuple[str, str]]:
    turns = _require(record, value, key, "sharegpt" if key == "conversations" else "messages")
    if not isinstance(turns, list) or not turns:
        raise record.bad(key, f"expected a non-empty list of turns, got {type(turns).__name__}")
    # Fast path for well-formed turns (nearly all of them); anything unusual goes through _check_turns, which
    # names the exact field that is wrong.
    result = []
    try:
        for turn in turns:
            text = turn[text_key]
            if type(text) is not str:
                break
            result.append((ROLES[turn[role_key]], text))
        else:
            return result
    except (KeyError, TypeError):
        pass
    _check_turns(record, turns, key, role_key, text_key)
    raise AssertionError("unreachable: _check_turns raises for any turn the fast path rejects")


def _check_turns(record: Record, turns: list, key: str, role_key: str, text_key: str) -> None:
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise record.bad(where, f"expected an object with '{role_key}' and '{text_key}'")
        role = _require(record, turn, role_key, where)
        if not isinstance(role, str) or role not in ROLES:
            raise record.bad(f"{where}.{role_key}", f"unknown role {role!r}; known roles: {', '.join(ROLES)}")
        _string(record, turn.get(text_key), f"{where}.{text_key}")


def _system(record: Record, value: dict) -> list[tuple[str, str]]:
    """A top-level system prompt (LLaMA-Factory's ShareGPT and Alpaca variants) becomes the first turn."""
    system = _string(record, value.get("system"), "system", optional=True)
    return [("system", system)] if system else []


def _sharegpt(record: Record, value: dict) -> Document:
    turns = _system(record, value) + _turn_list(record, value, "conversations", "from", "value")
    return Document(turns=turns, ignored=_unused(value, {"conversations", "system"}))


def _messages(record: Record, value: dict) -> Document:
    turns = _turn_list(record, value, "messages", "role", "content")
    return Document(turns=turns, ignored=_unused(value, {"messages"}))


def _alpaca(record: Record, value: dict) -> Document:
    turns = _system(record, value)
    history = value.get("history") or []
    if not isinstance(history, list):
        raise record.bad("history", "expected a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise record.bad(f"history[{i}]", "expected a [question, answer] pair")
        turns += [
            ("human", _string(record, pair[0], f"history[{i}][0]")),
            ("gpt", _string(record, pair[1], f"history[{i}][1]")),
        ]
    instruction = _string(record, _require(record, value, "instruction", "alpaca"), "instruction")
    extra = _string(record, value.get("input"), "input", optional=True)
    # The same joining as MedicalGPT's and BenTsao's conversions: the input follows the instruction on a new line.
    question = f"{instruction}\n{extra}" if extra else instruction
    turns += [("human", question), ("gpt", _string(record, _require(record, value, "output", "alpaca"), "output"))]
    return Document(turns=turns, ignored=_unused(value, {"instruction", "input", "output", "system", "history"}))


def _text(record: Record, value: dict) -> Document:
    text = _string(record, _require(record, value, "text", "text"), "text")
    return Document(text=text, ignored=_unused(value, {"text"}))


def _unused(value: dict, used: set[str]) -> tuple[str, ...]:
    if len(value) == 1:  # the usual record: only its one content key
        return ()
    return tuple(k for k in value if k not in used)


_CONVERTERS = {"sharegpt": _sharegpt, "messages": _messages, "alpaca": _alpaca, "text": _text}
