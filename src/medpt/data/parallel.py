"""A minimal worker pool: tasks run in this process (one worker, small inputs) or in spawned processes.

spawn, not fork: the parent may already hold torch/OpenMP or tokenizer threads, and forking a process with live
threads can deadlock. Spawned workers import only numpy, tokenizers and medpt's data modules (well under a second).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterable
from typing import Any


def _init_worker() -> None:
    # Each worker tokenizes with one thread: the processes are the parallelism, and oversubscribing two cores with
    # Rust threads as well only adds contention.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # Ctrl-C reaches the whole process group. Only the parent handles it (it terminates the pool): a worker that died
    # of it while holding the task queue's lock would hang Pool.terminate(), and the command with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Workers:
    def __init__(self, n: int):
        self.n = n
        self.pool = multiprocessing.get_context("spawn").Pool(n, initializer=_init_worker) if n > 1 else None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self.pool is None:
            return
        if exc_type is None:
            self.pool.close()
        else:
            self.pool.terminate()  # do not wait for the other tasks of a failed run
        self.pool.join()

    def map(self, fn: Callable, tasks: Iterable) -> list:
        """Results in task order; the first failing task (in order) raises its exception here."""
        if self.pool is None:
            return [fn(t) for t in tasks]
        return list(self.pool.imap(fn, tasks))

    def submit(self, fn: Callable, *args: Any) -> Future:
        """Start fn(*args) in the background (in-process: at once). Call the result (or .get()) to wait for it."""
        if self.pool is None:
            return Future(value=fn(*args))
        return Future(pending=self.pool.apply_async(fn, args))


class Future:
    """The result of a submitted task: `ready()` without waiting, `get()` (or calling it) waits."""

    def __init__(self, value: Any = None, pending: Any = None):
        self.value, self.pending = value, pending

    def ready(self) -> bool:
        return self.pending is None or self.pending.ready()

    def get(self) -> Any:
        if self.pending is not None:
            self.value, self.pending = self.pending.get(), None
        return self.value

    __call__ = get
