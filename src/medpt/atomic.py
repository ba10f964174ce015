"""Write-then-rename, so a crash or Ctrl-C never leaves a half-written file or directory that a later run trusts.

`os.replace` is atomic on POSIX when source and target are on the same filesystem, which is why the temporary
path is always a sibling of the target.

Names left behind by a kill (never trusted, only removed; see `stale_leftover`):
  .NAME.pid<PID>@<MACHINE>.<random>.tmp   a file or directory being written (older medpt: .NAME.<random>.tmp)
  .NAME.old-<PID>@<MACHINE>               the directory being replaced, between two renames (older: .NAME.old-<PID>)
MACHINE is a short hash of the host name and PID namespace, so a PID is only judged on the machine (and container)
that wrote it: a cache folder on a shared disk is also written by runs on other machines.

Every write medpt makes goes through this module (files, folders, renames into place, log lines), which is where
1. the manifest learns each name right before it is written (`observe_writes`: medpt.rundir records it);
2. files and folders get the mode the umask allows, not mkstemp's 0600 (a serving account must read an adapter);
3. an exception is tagged with the folder being written, so a full disk reads as one line naming it (medpt.errors);
4. the fault-injection tests kill or fill the disk at each event (medpt.faults, a no-op outside the tests).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from medpt.errors import MedptError
from medpt.faults import fault_point
from medpt.strictjson import dumps

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


def owner() -> str:
    """This process, as PID@MACHINE: the tag of its temporary names (and of `medpt tune`'s trials)."""
    return f"{os.getpid()}@{_machine()}"  # getpid at each call: a forked worker is another owner


def owner_dead(tag: str) -> bool:
    """Whether the process an `owner()` tag names is known to be gone (it ran on this machine and has exited)."""
    pid, _, machine = tag.partition("@")
    return machine == _machine() and pid.isdigit() and _pid_alive(int(pid)) is False


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.pid{owner()}."


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


def is_leftover(name: str) -> bool:
    """Whether a name is one atomic_writer or atomic_dir gives its temporary work (this medpt's tagged names): medpt's
    own, never a user's file, whether its writer still runs or was killed (see stale_leftover)."""
    return name.startswith(".") and (_TMP_OWNER.search(name) is not None or _OLD.match(name) is not None)


def remove_stale_leftovers(folder: Path, older_than_s: float = 3600, untagged: bool = False) -> None:
    """Remove what killed writers left in `folder` (never trusted, only removed); `stale_leftover` says which may go.
    An older medpt's untagged `.NAME.<random>.tmp` is judged by age only with `untagged`: in a folder that is medpt's
    alone (the cache), never beside a user's files, where such a name could be theirs."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        with contextlib.suppress(OSError):  # another run may be removing the same leftover at this moment
            if not (untagged or is_leftover(entry.name)) or not stale_leftover(entry, older_than_s):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()


def _remove_dead_leftovers_of(path: Path, where: Path) -> None:
    """A killed writer's temporaries of this very name go when the name is written again (a folder's other
    leftovers go when a command claims it: medpt.rundir)."""
    for entry in [*where.glob(f".{glob.escape(path.name)}.pid*.tmp"), *where.glob(f".{glob.escape(path.name)}.old-*")]:
        with contextlib.suppress(OSError):
            if is_leftover(entry.name) and stale_leftover(entry, older_than_s=3600):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


# --- what every write goes through ----------------------------------------------------------------------------------
_observers: list[Callable[[Path], None]] = []


def observe_writes(observer: Callable[[Path], None]) -> None:
    """Call `observer(path)` right before anything is written at `path` (medpt.rundir records the name)."""
    if observer not in _observers:
        _observers.append(observer)


def before_write(path: Path) -> None:
    """Tell the observers that `path` is about to be written."""
    for observer in _observers:
        observer(path)


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for every thread for a moment)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(line for line in f if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def tag_folder(e: BaseException, folder: str | os.PathLike) -> None:
    """Note on an exception the folder being written when it was raised (the innermost one wins), so that a full disk
    reported by a library that names no file (safetensors, torch, numpy) still reads as that folder's problem."""
    if getattr(e, "medpt_folder", None) is None:
        with contextlib.suppress(AttributeError, TypeError):
            e.medpt_folder = str(folder)  # type: ignore[attr-defined]


@contextlib.contextmanager
def writing_into(folder: str | os.PathLike) -> Iterator[None]:
    """Tag any exception raised inside with `folder` (see tag_folder): wrap library calls that write there."""
    try:
        yield
    except BaseException as e:
        tag_folder(e, folder)
        raise


def make_dir(path: str | os.PathLike) -> Path:
    """mkdir -p, recorded first like any other write."""
    path = Path(path)
    if not path.is_dir():
        before_write(path)
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a sibling temporary file; on a clean exit it replaces `path`, on an exception it is removed."""
    path = Path(path)
    before_write(path)
    with writing_into(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_leftovers_of(path, path.parent)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from every other account
            with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
                fault_point("write", path)
                yield f
                f.flush()
                os.fsync(f.fileno())
            fault_point("rename", path)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_writer(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, data: Any, **dump: Any) -> None:
    with atomic_writer(path) as f:
        f.write(dumps(data, **dump))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on a clean exit it becomes `path` (replacing an old one), on an exception it is
    removed. The temporary is a sibling of `path`, except when `path` is a mount point (which cannot be renamed):
    then it is made inside it and its entries are moved up one by one (see _move_entries)."""
    path = Path(path)
    before_write(path)
    with writing_into(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        inside = path.is_dir() and os.path.ismount(path)
        _remove_dead_leftovers_of(path, path if inside else path.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path if inside else path.parent))
        try:
            yield tmp
            umask_modes(tmp)
            fault_point("rename", path)
            if inside:
                _move_entries(tmp, path)
            else:
                _rename_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename a finished file or folder (written in a staging folder of the same disk) into place."""
    dst = Path(dst)
    before_write(dst)
    with writing_into(dst.parent):
        umask_modes(Path(src))
        fault_point("rename", dst)
        _rename_into_place(Path(src), dst)


def umask_modes(path: Path) -> None:
    """Give a finished file or folder tree the modes the umask allows (0644 / 0755 under the usual 022): mkdtemp
    makes folders 0700, and libraries that write through their own temporary files (transformers' save_pretrained)
    leave 0600 files, which an account serving the model could not read."""
    mask = _umask()
    for entry in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
        if not entry.is_symlink():
            entry.chmod((0o777 if entry.is_dir() else 0o666) & ~mask)


def _rename_into_place(tmp: Path, path: Path) -> None:
    if not path.is_dir() or path.is_symlink():
        os.replace(tmp, path)
        return
    # Two renames instead of rmtree-then-rename: the old directory stays complete until the new one is ready.
    # A kill between them leaves .NAME.old-PID@MACHINE and no NAME; the owner tag lets a later run remove it.
    old = path.with_name(f".{path.name}.old-{owner()}")
    try:
        os.replace(path, old)
    except OSError as e:
        if e.errno != errno.EBUSY:  # a mount point (or a folder the system holds): it cannot move, its entries can
            raise
        _move_entries(tmp, path)
        return
    fault_point("swap", path)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _move_entries(tmp: Path, path: Path) -> None:
    """Fill the folder `path` from `tmp` entry by entry, for a folder that cannot be replaced by a rename (a mount
    point). What `path` held moves aside first into .NAME.old-PID@MACHINE (inside it: removed once the new entries
    are in). The manifest (.medpt-manifest.json, the one dotfile medpt writes) moves first, naming every entry, so a
    kill half-way leaves a folder medpt knows is its own (the rest is in a dead writer's leftover, removed later)."""
    old = path / f".{path.name}.old-{owner()}"
    for entry in [p for p in path.iterdir() if p != tmp and not is_leftover(p.name)]:
        old.mkdir(exist_ok=True)
        os.replace(entry, old / entry.name)
    for entry in sorted(tmp.iterdir(), key=lambda p: not p.name.startswith(".")):
        fault_point("move", path / entry.name)
        shutil.move(entry, path / entry.name)  # a rename on one disk; a copy when tmp is on another (EBUSY fallback)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


# --- append logs (metrics.jsonl) ----------------------------------------------------------------------------------
def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to a log, in place and at once, so a crash loses nothing logged. Rewriting the file per line
    would cost O(lines²) over a long run; instead a file shared through a hard link (a `cp -al RUN RUN.bak` backup)
    is first copied and renamed (copy-on-write), so the backup keeps its bytes. A kill or a full disk mid-write can
    leave a cut last line, which `read_log` drops."""
    path = Path(path)
    before_write(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with writing_into(path.parent):
        if path.is_file() and path.stat().st_nlink > 1:
            with atomic_writer(path, "wb") as f, open(path, "rb") as shared:
                shutil.copyfileobj(shared, f)
        # Unbuffered, in two writes: the fault tests kill between them (the cut line a real crash can leave).
        with open(path, "ab", buffering=0) as f:
            f.write(data[: len(data) // 2])
            fault_point("append", path)
            f.write(data[len(data) // 2 :])


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of an append log. A cut last line (a kill or a full disk while it was appended) is not an error:
    it is left out. Any other line that is not JSON is (the file was damaged, or is not medpt's)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    rows = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(raw.decode("utf-8")))
        except ValueError:  # UnicodeDecodeError is a ValueError: a cut inside a multi-byte character
            if number == len(lines):  # no newline after it: the line was being written
                break
            raise MedptError(f"{path}:{number}: not a JSON line; the log is damaged") from None
    return rows


def cut_log(path: str | os.PathLike, keep: int) -> int:
    """Keep the first `keep` complete rows of an append log (rewritten, not truncated in place: a hard-linked backup
    keeps its bytes); returns how many were dropped (a cut last line is dropped too, and not counted)."""
    path = Path(path)
    if not path.is_file():
        return 0
    rows = read_log(path)
    raw = path.read_bytes()
    cut = bool(raw) and not raw.endswith(b"\n")
    if len(rows) <= keep and not cut:
        return 0
    atomic_write_text(path, "".join(dumps(row) + "\n" for row in rows[:keep]))
    return max(len(rows) - keep, 0)


# --- one writer per folder ------------------------------------------------------------------------------------------
class PathLock:
    """A lock (flock) on a folder, or on a lock file created if missing: one process of this machine at a time (or,
    `shared`, any number of them while no process holds it exclusively). Taken on the folder's own descriptor, it
    needs nothing created inside (so it can guard a folder's first claim), and the system releases it when its holder
    dies, however it dies: no stale lock to clean up after a kill. Reentrant within the process."""

    def __init__(self, path: str | os.PathLike, create: bool = False, shared: bool = False):
        self.path, self.create, self.shared, self._fd, self._depth = Path(path), create, shared, -1, 0

    def acquire(self, wait: bool = True) -> bool:
        """Take the lock (`shared`: alongside other shared holders, excluding an exclusive one); without `wait`, return
        False at once when another process holds it."""
        import fcntl

        if self._depth == 0:
            fd = os.open(self.path, os.O_RDONLY | (os.O_CREAT if self.create else 0), 0o666)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        self._depth += 1
        return True

    def release(self) -> None:
        self._depth -= 1
        if self._depth == 0:
            os.close(self._fd)  # closing the descriptor releases the lock

    @property
    def held(self) -> bool:
        return self._depth > 0

    def __enter__(self) -> PathLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
