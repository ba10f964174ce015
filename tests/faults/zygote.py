"""A fork server for the fault-injection tests: `python zygote.py` imports medpt and its heavy dependencies (torch,
transformers, peft: 5-20 s on a busy 2-core machine) once, then runs each `medpt` command in a forked child.

Each child is a process of its own (its own PID, killed for real by SIGKILL with no cleanup and no atexit, or
interrupted by SIGINT) that runs `medpt.cli.main(argv)` exactly as `python -m medpt` does, then exits with its
status. Nothing but the imports is shared: the parent never runs a command, so it holds no thread, no open file of a
run and no torch state when it forks (torch's thread pool starts lazily, and OMP_NUM_THREADS=1 keeps it away).

Protocol, one JSON object per line: {"argv", "env", "cwd", "stdout", "stderr", "memory_mb"?} starts a child and
answers {"pid"};
{"wait": [pid, ...], "timeout": s} answers {"pid", "status"} for the first of them to exit (its exit code, or -N
for signal N; both null if none exits before the timeout).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
import time
import traceback


def _preload() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
    import optuna  # noqa: F401
    import peft  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments  # noqa: F401
    from transformers.models.llama import modeling_llama  # noqa: F401

    import medpt.cli  # noqa: F401
    import medpt.data.pipeline  # noqa: F401
    import medpt.eval.command  # noqa: F401
    import medpt.export.command  # noqa: F401
    import medpt.export.merging  # noqa: F401
    import medpt.train.recipe  # noqa: F401
    import medpt.train.trainer  # noqa: F401
    import medpt.tune.study  # noqa: F401

    torch.set_num_threads(1)


def _child(request: dict) -> None:
    try:
        os.setpgid(0, 0)  # a process group of its own, like a command in a shell: Ctrl-C is os.killpg(pid, SIGINT)
        # Ctrl-C as a terminal delivers it: a test run started in the background (`pytest &` in a script) inherits
        # SIGINT ignored, which Python keeps, and every command here would then run through its Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        if request.get("memory_mb"):  # `ulimit -v`: this much address space more than the process has now
            import resource

            with open("/proc/self/status") as status:
                now_kb = int(next(line for line in status if line.startswith("VmSize:")).split()[1])
            limit = (now_kb << 10) + (request["memory_mb"] << 20)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        from medpt.cli import main

        sys.argv = ["medpt", *request["argv"]]
        code = main(request["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # what `python -m medpt` would print
        traceback.print_exc()
        code = 1
    # What the interpreter does on exit (multiprocessing joins its pools there), then exit the fork. A Ctrl-C that
    # lands now finds the command done, as it would find `python -m medpt` printing its last line: ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
        code = code or 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


_finished: dict[int, int] = {}  # children reaped while waiting for another


def _wait(pids: list[int], timeout: float) -> dict:
    """The first of `pids` to exit, with its status; {"pid": null} after the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        for pid in pids:
            if pid in _finished:
                return {"pid": pid, "status": _finished.pop(pid)}
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            pid = 0
        if pid:
            _finished[pid] = os.waitstatus_to_exitcode(status)
        elif time.monotonic() > deadline:
            return {"pid": None, "status": None}
        else:
            time.sleep(0.05)


def serve() -> None:
    _preload()
    if threading.active_count() != 1:  # forking a process with threads can deadlock its children
        raise SystemExit(f"zygote: {threading.active_count()} threads after the imports; cannot fork safely")
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            print(json.dumps(_wait(request["wait"], request.get("timeout", 600))), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), flush=True)


if __name__ == "__main__":
    serve()
