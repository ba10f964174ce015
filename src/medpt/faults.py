"""A test hook: the write events where the fault-injection suite (tests/faults) kills medpt or fills its disk.

Every write medpt makes goes through medpt.atomic, which calls `fault_point` at each event: a temporary file opened,
a finished file or folder about to be renamed into place, the moment between the two renames that replace a folder,
half a log line appended. With MEDPT_FAULT unset (always, outside the tests) an event costs one environment lookup.

    MEDPT_FAULT=log:FILE        append "N<TAB>EVENT<TAB>PATH" to FILE for every event (how the tests count them)
    MEDPT_FAULT=kill:N          SIGKILL this process at its Nth event: no cleanup, no atexit (a power cut)
    MEDPT_FAULT=int:N           SIGINT at the Nth event (Ctrl-C at an exact moment)
    MEDPT_FAULT=enospc:N        raise OSError(ENOSPC) at the Nth event (a disk that fills at that moment)

Items combine with commas (`log:/tmp/events,kill:12`). Events are counted per process, from 1.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "MEDPT_FAULT"
_count = [0, 0]  # [pid, events so far]: a forked child starts its own count


def fault_point(event: str, path: str | os.PathLike) -> None:
    spec = os.environ.get(ENV)
    if spec:
        _inject(spec, event, path)


def _inject(spec: str, event: str, path: str | os.PathLike) -> None:
    if _count[0] != os.getpid():
        _count[:] = [os.getpid(), 0]
    _count[1] += 1
    n = _count[1]
    for item in spec.split(","):
        action, _, arg = item.partition(":")
        if action == "log":
            fd = os.open(arg, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{n}\t{event}\t{path}\n".encode())
            os.close(fd)
        elif action == "kill" and n == int(arg):
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "int" and n == int(arg):
            os.kill(os.getpid(), signal.SIGINT)
        elif action == "enospc" and n == int(arg):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
