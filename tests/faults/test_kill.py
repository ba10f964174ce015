"""kill -9 at any write, then the same command: it finishes with exactly the result of an uninterrupted run.

For each command (prepare, train with its checkpoints, alone and with --replay_kl on mixed named sources, eval,
merge, export, tune), an uninterrupted run logs its write events (medpt.faults): a temporary file opened, a rename
into place, the manifest's own update, a log line half appended, a checkpoint being staged, a folder between its two
renames. Kill points are drawn from that log (seeded),
spread over the run and covering every kind of moment, so the suite follows the code as it changes. Each kill is a
real SIGKILL of the command's own process at that event: no cleanup, no atexit. Then the same command runs again and
must exit 0, leave none of the killed run's temporaries behind, and produce what the uninterrupted run produced: the
cached blocks and data report, the logged losses, the adapter and checkpoints (bytes), the evaluation, the merged
model and the export (bytes).
"""

from __future__ import annotations

import pytest

from tests.faults.harness import Run, differences, fresh, kill_points, leftovers, run_cases
from tests.faults.scenarios import Suite


@pytest.mark.parametrize("name", Suite.NAMES)
def test_a_kill_at_any_write_then_the_same_command_gives_the_uninterrupted_result(name, suite, tmp_path):
    if name == "tune":
        pytest.importorskip("optuna")
    scenario = suite.scenario(name)
    events, expected = suite.uninterrupted(name)
    points = kill_points(events)
    assert len(points) >= min(8, len(events)) and {e.kind for e in points} == {e.kind for e in events}

    def case(point):
        folder = fresh(tmp_path / f"kill-{point.n}")
        scenario.setup(folder)
        killed = yield Run(scenario.argv(folder), folder, {**scenario.env, "MEDPT_FAULT": f"kill:{point.n}"})
        assert killed.code == -9, f"not killed at {point} (exit {killed.code}): {killed.err[-2000:]}"
        rerun = yield Run(scenario.argv(folder), folder, scenario.env)
        assert rerun.code == 0, f"the rerun failed (exit {rerun.code}):\n{rerun.err[-3000:]}"
        assert leftovers(*(folder / o for o in scenario.outputs)) == []
        got = scenario.result(folder)
        assert got == expected, differences(expected, got)

    failures = run_cases(suite.zygote, {str(p): case(p) for p in points})
    assert not failures, f"{len(failures)} of {len(points)} kill points of {len(events)}:\n" + "\n".join(
        f"- killed at {where}: {what}" for where, what in failures.items()
    )
