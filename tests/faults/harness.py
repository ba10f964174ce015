"""The fault-injection harness: run `medpt` commands as processes of their own (forked by tests/faults/zygote.py, so
torch is imported once, not per run), with MEDPT_FAULT set (medpt.faults): count the write events of a run, kill it
at chosen ones, interrupt it, fill its disk; then compare the rerun with an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import one_error_line

ZYGOTE = Path(__file__).with_name("zygote.py")
SEED = 18  # the number: kill points are drawn from it, so a failure reproduces
TIMING = ("runtime", "per_second", "seconds", "created", "updated", "tokens_per_second")  # keys that differ by run


@dataclass
class Result:
    code: int | None  # exit status; -9 when killed; None when still running at the timeout
    out: str
    err: str
    pid: int = 0

    def one_line_error(self, *needles: str) -> str:
        return one_error_line(self.err, *needles)


@dataclass
class Run:
    """One command for the zygote: what a case yields to the scheduler (`run_cases`)."""

    argv: list
    cwd: Path
    env: dict[str, str] | None = None
    timeout: float = 600
    memory_mb: int = 0  # `ulimit -v`: address space allowed beyond what the forked process holds (0: no limit)


class Zygote:
    """The fork server and its children: `run` one command, or `start` it and `wait` (with a timeout)."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.n = env, logs, 0
        logs.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True)  # fmt: skip
        ready = self.proc.stdout.readline()
        assert ready.startswith('{"ready"'), f"the zygote did not start: {ready!r}"
        self.logs_of: dict[int, Path] = {}

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, run: Run) -> int:
        self.n += 1
        log = self.logs / f"{self.n:04d}"
        request = {"argv": [str(a) for a in run.argv], "env": {**self.env, **(run.env or {})}, "cwd": str(run.cwd),
                   "stdout": f"{log}.out", "stderr": f"{log}.err", "memory_mb": run.memory_mb}  # fmt: skip
        pid = self._ask(request)["pid"]
        self.logs_of[pid] = log
        return pid

    def wait(self, pids: list[int], timeout: float = 600) -> Result:
        """The first of `pids` to exit (code None, pid 0: none did within the timeout)."""
        answer = self._ask({"wait": pids, "timeout": timeout})
        if answer["pid"] is None:
            return Result(None, "", "", 0)
        log = self.logs_of.pop(answer["pid"])
        read = lambda suffix: Path(f"{log}{suffix}").read_text(errors="replace")  # noqa: E731
        return Result(answer["status"], read(".out"), read(".err"), answer["pid"])

    def run(self, argv: list, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> Result:
        pid = self.start(Run(argv, cwd, env))
        result = self.wait([pid], timeout)
        if result.code is None:
            os.kill(pid, signal.SIGKILL)
            self.wait([pid])
            raise AssertionError(f"medpt {argv[0]} still ran after {timeout} s")
        return result

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run_cases(zygote: Zygote, cases: dict[str, Generator], lanes: int = 2) -> dict[str, str]:
    """Drive the cases, `lanes` at a time (the machine's 2 cores): each case is a generator that yields Run requests
    and receives their Results, asserting as it goes. Returns {case: what went wrong} for the cases that failed."""
    waiting = list(cases.items())
    running: dict[int, tuple[str, Generator]] = {}
    failures: dict[str, str] = {}

    def advance(name: str, case: Generator, result: Result | None) -> None:
        try:
            request = case.send(result) if result is not None else next(case)
        except StopIteration:
            return
        except AssertionError as e:
            failures[name] = str(e)[:3000]
            return
        running[zygote.start(request)] = (name, case)

    while waiting or running:
        while waiting and len(running) < lanes:
            advance(*waiting.pop(0), None)
        if running:
            result = zygote.wait(list(running), timeout=900)
            assert result.code is not None, f"no command ended within 900 s: {[n for n, _ in running.values()]}"
            advance(*running.pop(result.pid), result)
    return failures


# --- write events and kill points ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Event:
    n: int
    kind: str  # write, rename, swap, move, append, save (medpt.faults)
    path: str

    @classmethod
    def read(cls, log: Path) -> list[Event]:
        if not log.is_file():
            return []
        rows = [line.split("\t") for line in log.read_text().splitlines() if line]
        return [cls(int(n), kind, path) for n, kind, path in rows]

    def __str__(self) -> str:
        return f"#{self.n} {self.kind} {self.path}"


def count_events(zygote: Zygote, argv: list, cwd: Path, env: dict[str, str] | None = None) -> list[Event]:
    """Run the command uninterrupted in `cwd`, logging its write events (the log is left beside it, not inside)."""
    log = cwd.with_name(cwd.name + ".events.tsv")
    log.unlink(missing_ok=True)
    result = zygote.run(argv, cwd, {**(env or {}), "MEDPT_FAULT": f"log:{log}"})
    assert result.code == 0, result.err[-3000:]
    return Event.read(log)


def _category(e: Event) -> str:
    return e.kind + (" manifest" if e.path.endswith(".medpt-manifest.json") else "")


def kill_points(events: list[Event], n: int = 8, seed: int = SEED) -> list[Event]:
    """`n` events spread over the run (one drawn from each of n equal stretches), and at least one of every category
    (write, rename, swap, append, save, ..., and the manifest's own write and rename): every kind of moment."""
    if len(events) <= n:
        return list(events)
    rng = random.Random(f"{seed}:{len(events)}")
    edges = [round(i * len(events) / n) for i in range(n + 1)]
    chosen = {events[rng.randrange(a, b)] for a, b in zip(edges, edges[1:]) if b > a}
    for category in sorted({_category(e) for e in events} - {_category(e) for e in chosen}):
        chosen.add(rng.choice([e for e in events if _category(e) == category]))
    return sorted(chosen, key=lambda e: e.n)


# --- comparing results ----------------------------------------------------------------------------------------------
def leftovers(*roots: Path) -> list[str]:
    """Temporary names of medpt's writer anywhere under roots (what a killed run left and the rerun did not clear)."""
    from medpt.atomic import is_leftover

    return sorted(str(p) for root in roots if root.exists() for p in root.rglob("*") if is_leftover(p.name))


def file_bytes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under root by relative path, except names in `skip` (compared separately)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip and not any(part in skip for part in p.relative_to(root).parts)
    }


def without_timing(value):
    """A JSON value with every run-dependent entry (times, rates, timestamps) left out."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if not any(t in k for t in TIMING)}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def json_file(path: Path, case: Path | None = None):
    """A JSON file without its timings, the case's folder written as CASE (cases run in folders of their own)."""
    text = path.read_text(encoding="utf-8")
    if case is not None:
        text = text.replace(str(case), "CASE")
    return without_timing(json.loads(text))


def fresh(path: Path, like: Path | None = None) -> Path:
    """`path` emptied (or made a copy of `like`): every case starts from the same state at the same path."""
    if path.exists():
        shutil.rmtree(path)
    if like is not None:
        shutil.copytree(like, path, symlinks=True)
    else:
        path.mkdir(parents=True)
    return path


def wait_for(condition, timeout: float = 300, every: float = 0.1) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(every)
    return False


def zygote_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDPT_")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(home), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")  # fmt: skip
    return env


def differences(expected: dict, got: dict) -> str:
    """The keys of two results that differ, each value shown short."""
    return "; ".join(f"{k}: expected {expected.get(k)!r:.400}, got {got.get(k)!r:.400}"
                     for k in sorted(set(expected) | set(got)) if expected.get(k) != got.get(k))  # fmt: skip
