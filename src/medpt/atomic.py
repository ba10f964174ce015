"""Write-then-rename, so a crash or Ctrl-C never leaves a half-written file or directory that a later run trusts.

`os.replace` is atomic on POSIX when source and target are on the same filesystem, which is why the temporary
path is always a sibling of the target.

Names left behind by a kill (never trusted, only removed; see `stale_leftover`):
  .NAME.pid<PID>@<MACHINE>.<random>.tmp   a file or directory being written (older medpt: .NAME.<random>.tmp)
  .NAME.old-<PID>@<MACHINE>               the directory being replaced, between two renames (older: .NAME.old-<PID>)
MACHINE is a short hash of the host name and PID namespace, so a PID is only judged on the machine (and container)
that wrote it: a cache folder on a shared disk is also written by runs on other machines.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from medpt.errors import MedptError

_TMP_OWNER = re.compile(r"\.pid(\d+)@([0-9a-f]{8})\.[^.]*\.tmp$")
_OLD = re.compile(r"^\..+\.old-(\d+)(?:@([0-9a-f]{8}))?$")


@functools.lru_cache(maxsize=1)
def _machine() -> str:
    # Containers on one host can share its host name (e.g. docker --network host) but not its PIDs: the PID
    # namespace tells them apart.
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    return hashlib.sha1(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:8]


def _owner() -> str:
    return f"{os.getpid()}@{_machine()}"  # getpid at each call: a forked worker is another owner


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.pid{_owner()}."


def _pid_alive(pid: int) -> bool | None:
    """Whether a process of this machine is running (None: cannot tell)."""
    if pid <= 0 or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process, not probe it
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OSError:
        return None
    return True


def _owner_alive(name: str) -> bool | None:
    """Whether the process that wrote a leftover name still runs (None: cannot tell)."""
    old = _OLD.match(name)
    if old:
        # An untagged .old-PID (older medpt) is judged by its PID although it might be another machine's: removing
        # an .old directory is harmless even while its writer lives (see stale_leftover).
        if old.group(2) is not None and old.group(2) != _machine():
            return None
        return _pid_alive(int(old.group(1)))
    tagged = _TMP_OWNER.search(name)
    if tagged is None or tagged.group(2) != _machine():
        return None  # an older medpt's name, or another machine's PID
    return _pid_alive(int(tagged.group(1)))


def stale_leftover(path: Path, older_than_s: float) -> bool:
    """Whether `path` is something atomic_writer or atomic_dir left behind that can be removed now.

    - .NAME.old-PID: when its writer is dead or it is older than older_than_s. Removing one is always safe (its
      writer only deletes it after the second rename), so age alone is enough; the rename keeps the replaced
      directory's own mtime, which is why such a leftover is usually "old" at once.
    - .NAME....tmp: when its writer is dead; when the writer cannot be judged (an older medpt's name, another
      machine's), once older than older_than_s; never while its writer runs, however long it takes. A PID reused
      since reads as alive: the leftover then waits for that process to end, which costs disk space, never a live
      run's work.
    """
    name = path.name
    is_old = _OLD.match(name) is not None
    if not name.startswith(".") or not (is_old or name.endswith(".tmp")):
        return False
    alive = _owner_alive(name)
    if alive is False:
        return True
    if alive and not is_old:
        return False
    return time.time() - path.lstat().st_mtime > older_than_s


def check_free_space(directory: str | os.PathLike, needed_bytes: int, what: str, elsewhere: str = "it") -> None:
    """Fail before writing, not half-way: raise a MedptError when the disk holding `directory` (which need not exist
    yet: its nearest existing ancestor is asked) has less than `needed_bytes` free. `elsewhere` names the flag or
    variable that moves the output, for the message."""
    directory = Path(directory)
    probe = directory.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise MedptError(
            f"{what} needs about {_mb(needed_bytes)} MB in {directory}, but only {_mb(free)} MB are free; free some "
            f"space or point {elsewhere} elsewhere"
        )


def _mb(n: int) -> str:
    """Megabytes with the decimals that matter: 1,234 / 5.6 / 0.004 (a small need must not read as 0)."""
    return f"{n / 1e6:,.0f}" if n >= 10e6 else f"{n / 1e6:.1f}" if n >= 1e5 else f"{n / 1e6:.3f}"


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a sibling temporary file; on a clean exit it replaces `path`, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a sibling temporary directory; on a clean exit it becomes `path` (replacing an old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            # Two renames instead of rmtree-then-rename: the old directory stays complete until the new one is ready.
            # A kill between them leaves .NAME.old-PID@MACHINE and no NAME; the owner tag lets a later run remove it.
            old = path.with_name(f".{path.name}.old-{_owner()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
