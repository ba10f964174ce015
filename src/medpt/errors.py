"""The one exception type for mistakes a user can make (bad flag, bad file, bad record).

The CLI prints these as a one-line message and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re


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
    errno.ELOOP: "too many levels of symbolic links (a link that points to itself?)",
    errno.EBUSY: "busy (a mount point, or in use by the system)",
    errno.EFBIG: "file too large for this file system",
}
# How libraries report a full disk without an errno, matched in the message: the OS's own words, quoted by any
# library (safetensors' SafetensorError and tokenizers' plain Exception come from Rust: "No space left on device (os
# error 28)", StorageFull); and, from RuntimeError or OSError only, torch.save's zip writer (inline_container.cc:
# "file write failed", "unexpected pos N vs M" after a short write, the C++ stream's "basic_ios::clear") and numpy's
# tofile/save ("N requested and M written").
_DISK_FULL_WORDS = re.compile(r"No space left on device|StorageFull|Disk quota exceeded|os error (28|122)\b")
_SHORT_WRITE_WORDS = re.compile(
    r"PytorchStreamWriter failed writing|file write failed|unexpected pos \d+ vs \d+|basic_ios::clear: iostream error"
    r"|\d+ requested and \d+ written"
)
# How the libraries report an allocation they could not make, when not as MemoryError: torch's CPU allocator and its
# file mmap (loading safetensors weights) raise RuntimeError, safetensors' Rust code its own exception type, C++
# extensions std::bad_alloc; ENOMEM's text ("Cannot allocate memory") is in most of them.
_OUT_OF_MEMORY_WORDS = re.compile(
    r"DefaultCPUAllocator: (can't allocate memory|not enough memory)|Cannot allocate memory|std::bad_alloc"
    r"|kind: OutOfMemory"
)


def user_message(e: BaseException) -> str | None:
    """The one-line message for an exception a user, a full disk, a limit or the system can cause; None for anything
    else (a bug: it keeps its traceback). The CLI's one exception boundary: add a branch per kind of error."""
    if _disk_full(e):
        return _disk_full_message(e)
    if _out_of_memory(e):
        return (
            "out of memory: an allocation failed (the machine's RAM, or a limit such as `ulimit -v`); use a smaller "
            "--per_device_train_batch_size, --block_size or model, or raise the limit"
        )
    if isinstance(e, OSError):
        return user_os_error(e)
    return None


def _out_of_memory(e: BaseException) -> bool:
    """MemoryError (Python's allocator, numpy), ENOMEM (mmap, fork), or a library's message for one (above), in the
    exception or what it was raised from (a library may wrap it)."""
    for link in _chain(e):
        if isinstance(link, MemoryError) or (isinstance(link, OSError) and link.errno == errno.ENOMEM):
            return True
        if isinstance(link, Exception) and _OUT_OF_MEMORY_WORDS.search(str(link)):
            return True
    return False


def _disk_full(e: BaseException) -> bool:
    for link in _chain(e):
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(link, Exception) and _DISK_FULL_WORDS.search(str(link)):
            return True
        if isinstance(link, (OSError, RuntimeError)) and _SHORT_WRITE_WORDS.search(str(link)):
            return True
    return False


def _chain(e: BaseException) -> list[BaseException]:
    """The exception and those it was raised from or during (a library may wrap the OSError)."""
    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    return seen


def _disk_full_message(e: BaseException) -> str:
    """`FOLDER: no space left on the device (N MiB free there); ...`, FOLDER being the one medpt was writing when the
    error was raised (medpt.atomic tags it), else the failing file's."""
    import shutil
    from pathlib import Path

    folder = next((getattr(x, "medpt_folder", None) for x in _chain(e) if getattr(x, "medpt_folder", None)), None)
    filename = next((x.filename for x in _chain(e) if isinstance(x, OSError) and x.filename), None)
    quota = any((isinstance(x, OSError) and x.errno == errno.EDQUOT) or "quota" in str(x).lower() for x in _chain(e))
    where = Path(folder) if folder else Path(str(filename)).parent if filename else None
    probe = where if where is not None else Path(".")
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    return (
        f"{where if where is not None else 'a file'}: {_OS_ADVICE[errno.EDQUOT if quota else errno.ENOSPC]} "
        f"({free / 2**20:,.0f} MiB free there); free some space or choose a folder on another disk. What medpt "
        "had written before is intact: rerun the same command once there is room"
    )


def user_os_error(e: OSError) -> str | None:
    """The one-line message for an OSError a user can cause, or None for anything else."""
    if e.errno not in _OS_ADVICE:
        return None
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return _disk_full_message(e)
    where = e.filename if e.filename is not None else getattr(e, "medpt_folder", None) or "a file"
    message = f"{where}: {_OS_ADVICE[e.errno]}"
    if e.filename2 is not None:
        message = f"{e.filename} -> {e.filename2}: {_OS_ADVICE[e.errno]}"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        message += "; choose a folder you can write to"
    return message
