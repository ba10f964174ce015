"""Ctrl-C at any moment: the command stops within 10 s, in one line and without a traceback, leaving a folder the
same command continues to exactly the result of an uninterrupted run.

Ctrl-C is SIGINT, raised at moments drawn from the uninterrupted run's write events (MEDPT_FAULT=int:N: at exactly
that event, so a failure reproduces; a signal from outside lands at a moment of its own, after the last write as
well). The data workers' case sends it, as a terminal does, to the command's whole process group.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import zlib
from pathlib import Path

import pytest

from tests.faults.harness import Event, Run, differences, fresh, kill_points, leftovers, wait_for

SIGNAL_TO_EXIT_S = 10
COMMANDS = ("prepare", "train", "eval", "merge", "export")


def _interrupt(suite, argv: list, folder: Path, at: int | str, env: dict | None = None):
    """Run the command with Ctrl-C at its write event `at`, or (a string) sent to its process group once it logs an
    event whose path ends so; (result, seconds from the signal to the exit, whether the event was reached)."""
    log = folder.with_name(folder.name + ".events.tsv")
    log.unlink(missing_ok=True)
    outside = isinstance(at, str)
    fault = f"log:{log}" + ("" if outside else f",int:{at}")
    pid = suite.zygote.start(Run(argv, folder, {**(env or {}), "MEDPT_FAULT": fault}))
    if outside:
        reached = wait_for(lambda: any(e.path.endswith(at) for e in Event.read(log)), timeout=300, every=0.02)
    else:
        reached = wait_for(lambda: len(Event.read(log)) >= at, timeout=300, every=0.02)
    sent = time.monotonic()
    if outside:
        os.killpg(pid, signal.SIGINT)
    result = suite.zygote.wait([pid], timeout=SIGNAL_TO_EXIT_S + 50)
    if result.code is None:
        os.killpg(pid, signal.SIGKILL)
        suite.zygote.wait([pid])
    return result, time.monotonic() - sent, reached


@pytest.mark.parametrize("name", COMMANDS)
def test_ctrl_c_stops_promptly_and_the_same_command_then_gives_the_uninterrupted_result(name, suite, tmp_path):
    scenario = suite.scenario(name)
    events, expected = suite.uninterrupted(name)
    for point in kill_points(events, n=3, seed=zlib.crc32(name.encode()))[:3]:
        folder = fresh(tmp_path / f"int-{point.n}")
        scenario.setup(folder)
        result, seconds, reached = _interrupt(suite, scenario.argv(folder), folder, point.n, scenario.env)
        where = f"Ctrl-C at {point}"
        assert result.code is not None, f"{where}: still running {SIGNAL_TO_EXIT_S + 50} s after the signal"
        assert seconds <= SIGNAL_TO_EXIT_S, f"{where}: exited {seconds:.1f} s after the signal"
        assert result.code == 130, f"{where}: exit {result.code}\n{result.err[-3000:]}"
        assert "Traceback" not in result.err, f"{where}:\n{result.err[-3000:]}"
        rerun = suite.zygote.run(scenario.argv(folder), folder, scenario.env)
        assert rerun.code == 0, f"{where}: the rerun failed:\n{rerun.err[-3000:]}"
        assert leftovers(*(folder / o for o in scenario.outputs)) == []
        got = _without_extra_checkpoints(scenario.result(folder), expected)
        assert got == expected, f"{where}: " + differences(expected, got)


def _without_extra_checkpoints(got: dict, expected: dict) -> dict:
    """The checkpoint Ctrl-C saves at the step it stopped (train's promise: "finish the step, save, stop") is the
    one thing an interrupted run may add; the adapter, the log and the other checkpoints are the uninterrupted run's."""
    if "checkpoints" not in got:
        return got
    extra = set(got["checkpoints"]) - set(expected["checkpoints"])
    got = dict(got)
    for key in ("checkpoints", "states", "descriptions", "manifest"):
        got[key] = {k: v for k, v in got[key].items() if k not in extra}
    got["files"] = [n for n in got["files"] if n not in extra]
    return got


def test_a_train_stopped_before_its_data_is_ready_is_already_a_run(suite, tmp_path):
    """The configuration, the base's fingerprint and the training arguments are written first: eval, merge and
    report can tell what a stopped run is, and the same command continues it."""
    scenario = suite.scenario("train")
    events, expected = suite.uninterrupted("train")
    first_cache_write = next(e for e in events if "/cache/" in e.path or e.path.startswith("cache"))
    folder = fresh(tmp_path / "early")
    result, _, _ = _interrupt(suite, scenario.argv(folder), folder, first_cache_write.n)
    assert result.code == 130, result.err[-3000:]
    run = folder / "run"
    for name in ("medpt_config.yaml", "base_model.json", "training_args.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "base_model.json").read_text())["fingerprint"]
    assert suite.zygote.run(scenario.argv(folder), folder).code == 0
    assert scenario.result(folder) == expected


def _big_corpus(path: Path, megabytes: float = 4.5) -> Path:
    """Enough text for medpt to prepare it with a pool of worker processes (above its 4 MB threshold)."""
    rng = random.Random(0)
    words = "头痛 发热 咳嗽 腹泻 高血压 糖尿病 治疗 建议 休息 多喝水 检查 医院 医生 患者 症状 药物".split()
    with open(path, "w", encoding="utf-8") as f:
        while f.tell() < megabytes * 2**20:
            f.write(json.dumps({"text": "".join(rng.choices(words, k=40))}, ensure_ascii=False) + "\n")
    return path


def test_ctrl_c_while_worker_processes_prepare_data_stops_eval_at_once_without_a_traceback(suite, tmp_path):
    """A terminal's Ctrl-C reaches medpt's data workers too: they must leave it to medpt (which stops them), not die
    with a traceback each, nor leave a pool that never ends."""
    corpus = _big_corpus(tmp_path / "big.jsonl")
    scenario = suite.scenario("eval")
    folder = fresh(tmp_path / "case")
    scenario.setup(folder)
    argv = ["eval", "--adapter", folder / "run", "--data_cache_dir", folder / "cache", "--eval_sets", f"big={corpus}",
            "--preprocessing_num_workers", "2", "--shard_mb", "0.3"]  # fmt: skip
    # The run's own data is one shard: a third one is the big set's, prepared by the pool at that moment.
    result, seconds, reached = _interrupt(suite, argv, folder, at="shard-000002")
    assert reached, "the workers never wrote a shard"
    assert result.code == 130 and seconds <= SIGNAL_TO_EXIT_S, (result.code, seconds, result.err[-3000:])
    assert "Traceback" not in result.err, result.err[-3000:]
