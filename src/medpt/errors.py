"""The one exception type for mistakes a user can make (bad flag, bad file, bad record).

The CLI prints these as a one-line message and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno


class MedptError(Exception):
    """A user-facing error: the message says what is wrong, where (file, line, field or flag), and what to do."""


class BadRecordError(MedptError):
    """A record that cannot be turned into a document; carries its location so `--on_bad_record skip` can log it."""

    skip_reason = "bad_record"  # what the data report counts it as, with --on_bad_record skip

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


# OS errors a user causes (a full disk, a read-only or missing folder, a file where a folder should be), by errno:
# the CLI prints them as one line with what to do. Any other OSError is a bug and keeps its traceback.
_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a file stands where a folder is needed",
    errno.EISDIR: "is a folder, not a file",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "file name too long",
    errno.EMFILE: "too many open files",
}


def user_os_error(e: OSError) -> str | None:
    """The one-line message for an OSError a user can cause, or None for anything else."""
    if e.errno not in _OS_ADVICE:
        return None
    where = e.filename if e.filename is not None else "a file"
    message = f"{where}: {_OS_ADVICE[e.errno]}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        import shutil
        from pathlib import Path

        folder = Path(str(e.filename)).parent if e.filename else Path(".")
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        message += f" ({free / 2**20:,.0f} MiB free there); free some space or choose a folder on another disk"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        message += "; choose a folder you can write to"
    return message
