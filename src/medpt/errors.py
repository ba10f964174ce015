"""The one exception type for mistakes a user can make (bad flag, bad file, bad record).

The CLI prints these as a one-line message and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MedptError(Exception):
    """A user-facing error: the message says what is wrong, where (file, line, field or flag), and what to do."""


class BadRecordError(MedptError):
    """A record that cannot be turned into a document; carries its location so `--on_bad_record skip` can log it."""

    def __init__(
        self, source: str, line: int | None, field: str | None, reason: str, raw: object = None, unit: str = "line"
    ):
        self.source, self.line, self.field, self.reason, self.raw = source, line, field, reason, raw
        # Text files have lines; parquet files and hub datasets have rows.
        where = source if line is None else (f"{source}:{line}" if unit == "line" else f"{source} row {line}")
        super().__init__(f"{where}: {'field ' + repr(field) + ': ' if field else ''}{reason}")

    def to_json(self) -> dict:
        """The line written to rejected.jsonl: location, reason and the record itself, so nothing is lost."""
        raw = self.raw if isinstance(self.raw, (dict, list, str, int, float, bool, type(None))) else repr(self.raw)
        return {"source": self.source, "line": self.line, "field": self.field, "reason": self.reason, "record": raw}
