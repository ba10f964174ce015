"""A full disk, or no memory left, at any moment: one `medpt: error:` line naming the folder and its free space, no
traceback; what was written before is intact (each checkpoint, the cached data), nothing half-written stays (the
staging folder, the writer's temporaries); and the same command, once there is room, gives the uninterrupted result.

The disk is real where the tests run as root (CI does): a small tmpfs, mounted for the test, that fills while medpt
writes, so the errors are the libraries' own (safetensors' SafetensorError, torch.save's RuntimeError, numpy's
"N requested and M written", Python's OSError). Elsewhere, and at seeded moments in any case, MEDPT_FAULT=enospc:N
raises ENOSPC at a write event.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from medpt.errors import user_message
from medpt.rundir import ALL_RESULTS, RUN_DESCRIPTION
from tests.faults.harness import Run, differences, file_bytes, fresh, kill_points, leftovers
from tests.faults.scenarios import description

MiB = 2**20


@contextlib.contextmanager
def small_disk(path: Path, size: int):
    """A tmpfs of `size` bytes mounted at `path` (created), unmounted afterwards; skips the test if mounting fails."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small disk (tmpfs) needs root")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _grow(path: Path, size: int) -> None:
    """Make room: the same disk, larger (what freeing space does)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def _used(path: Path) -> int:
    return shutil.disk_usage(path).used


def _disk_full_line(result, folder: Path) -> str:
    assert result.code == 2, f"exit {result.code}:\n{result.err[-3000:]}"
    line = result.one_line_error("no space left on the device", "MiB free there")
    assert str(folder) in line, line
    return line


@pytest.mark.parametrize("name", ["prepare", "train"])
def test_a_disk_that_fills_up_is_one_line_and_what_was_written_before_stays(name, suite, tmp_path):
    scenario = suite.scenario(name)
    _, expected = suite.uninterrupted(name)
    with small_disk(tmp_path / "disk", 200 * MiB) as disk:
        scenario.setup(disk)
        assert suite.zygote.run(scenario.argv(disk), disk).code == 0
        needed = _used(disk)
    # Full while preparing data, while saving a checkpoint (the weights, the optimizer state, the tokenizer), while
    # saving the adapter and results at the end: each library reports it its own way.
    for share in (0.3, 0.55, 0.75, 0.95) if name == "train" else (0.3, 0.8):
        with small_disk(tmp_path / f"disk-{share}", int(needed * share)) as disk:
            scenario.setup(disk)
            result = suite.zygote.run(scenario.argv(disk), disk)
            where = f"a disk of {int(needed * share) / MiB:.1f} MiB"
            _disk_full_line(result, disk)  # the whole run needs `needed`: it stops somewhere
            assert leftovers(disk) == [], where
            assert not any((disk / "run" / ".staging").glob("*")), f"{where}: half a save left in .staging"
            for checkpoint in (disk / "run").glob("checkpoint-*"):  # each one complete, as it was saved
                got = file_bytes(checkpoint, skip=("trainer_state.json", "training_args.bin", *RUN_DESCRIPTION))
                assert got == expected["checkpoints"][checkpoint.name], f"{where}: {checkpoint.name} damaged"
                # its description names the case's folder: compared with that folder written as CASE
                got = description(checkpoint, disk)
                assert got == expected["descriptions"][checkpoint.name], f"{where}: {checkpoint.name} described wrong"
            _grow(disk, 200 * MiB)
            rerun = suite.zygote.run(scenario.argv(disk), disk)
            assert rerun.code == 0, f"{where}: the rerun failed:\n{rerun.err[-3000:]}"
            got = scenario.result(disk)
            assert got == expected, f"{where}: " + differences(expected, got)


@pytest.mark.parametrize("name", ["prepare", "train"])
def test_no_space_at_any_write_is_one_line_and_the_rerun_gives_the_uninterrupted_result(name, suite, tmp_path):
    """The same promise on any machine: ENOSPC raised at seeded write events (MEDPT_FAULT=enospc:N)."""
    scenario = suite.scenario(name)
    events, expected = suite.uninterrupted(name)
    for point in kill_points(events, n=3, seed=len(name))[:3]:
        folder = fresh(tmp_path / f"enospc-{point.n}")
        scenario.setup(folder)
        full = suite.zygote.run(scenario.argv(folder), folder, {"MEDPT_FAULT": f"enospc:{point.n}"})
        assert full.code == 2, f"disk full at {point}: exit {full.code}\n{full.err[-3000:]}"
        full.one_line_error("no space left on the device", "MiB free there", str(folder))
        rerun = suite.zygote.run(scenario.argv(folder), folder)
        assert rerun.code == 0, f"disk full at {point}: the rerun failed:\n{rerun.err[-3000:]}"
        assert leftovers(folder) == []
        got = scenario.result(folder)
        assert got == expected, f"disk full at {point}: " + differences(expected, got)


def test_merge_counts_the_tokenizer_in_its_space_check_and_writes_nothing_it_cannot_finish(suite, tmp_path):
    """Room for the weights but not for the tokenizer and config: refused before anything is written (a check
    that counted only the weights let the merge start, then fail half-way)."""
    base = suite.base
    weights = sum(p.stat().st_size for p in (base.parent / "merged").glob("*.safetensors"))
    with small_disk(tmp_path / "disk", weights + 128 * 1024) as disk:  # tokenizer.json alone is ~360 KB
        shutil.copytree(base, tmp_path / "run")
        result = suite.zygote.run(["merge", "--adapter", tmp_path / "run", "--output_dir", disk / "merged"], tmp_path)
        assert result.code == 2, result.err[-3000:]
        result.one_line_error("needs about", "MB are free")
        assert list(disk.iterdir()) == []


def test_merge_into_an_empty_mount_point(suite, tmp_path):
    """A mount point cannot be renamed over (EBUSY): the merged model is written inside it and moved up."""
    base = suite.base
    with small_disk(tmp_path / "merged", 200 * MiB) as target:
        shutil.copytree(base, tmp_path / "run")
        result = suite.zygote.run(["merge", "--adapter", tmp_path / "run", "--output_dir", target], tmp_path)
        assert result.code == 0, result.err[-3000:]
        skip = (".medpt-manifest.json", "medpt_merge.json")
        assert file_bytes(target, skip=skip) == file_bytes(base.parent / "merged", skip=skip)
        assert leftovers(target) == [] and (target / ".medpt-manifest.json").is_file()


@pytest.mark.parametrize("margin_mb", [5, 10, 15, 20, 30, 40, 60, 80, 120, 160, 240, 320])
def test_out_of_memory_under_ulimit_v_is_one_line(margin_mb, suite, tmp_path):
    """An address-space limit from just above what the process holds to about what the whole run needs: wherever an
    allocation fails (reading, tokenizing, importing, mapping the weights, a step) it is one line; where none does,
    the run finishes. (Which margins fail is not monotonic: arenas and threads claim address space in steps.)"""
    scenario = suite.scenario("train")
    folder = fresh(tmp_path / "case")
    result = suite.zygote.wait([suite.zygote.start(Run(scenario.argv(folder), folder, memory_mb=margin_mb))])
    if margin_mb <= 10:  # far below what training takes: the limit must bite
        assert result.code == 2, f"exit {result.code}:\n{result.err[-3000:]}"
    assert result.code in (0, 2), f"exit {result.code}:\n{result.err[-3000:]}"
    if result.code == 2:
        result.one_line_error("out of memory", "ulimit -v")
    else:
        assert (folder / "run" / ALL_RESULTS).is_file(), result.err[-3000:]


class SafetensorError(Exception):
    """Stands for safetensors' own exception type (a Rust one): the boundary knows it by name and message."""


DISK_FULL_AS_LIBRARIES_REPORT_IT = [
    OSError(errno.ENOSPC, "No space left on device"),  # f.write names no file
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    OSError("1048576 requested and 0 written"),  # numpy's ndarray.tofile / np.save
    Exception("No space left on device (os error 28)"),  # tokenizers' save (Rust)
    SafetensorError(
        'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    ),  # fmt: skip
    RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"),
    RuntimeError(
        "[enforce fail at inline_container.cc:815] . PytorchStreamWriter failed writing file data/0: file write failed"
    ),  # fmt: skip
]


@pytest.mark.parametrize("error", DISK_FULL_AS_LIBRARIES_REPORT_IT, ids=lambda e: type(e).__name__)
def test_the_boundary_reads_every_library_s_disk_full_as_one_line_naming_the_folder(error, tmp_path):
    from medpt.atomic import writing_into

    if "unexpected pos" in str(error):  # torch's message for a short write says nothing of a disk: its cause does
        error.__context__ = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(type(error)) as caught, writing_into(tmp_path):
        raise error
    message = user_message(caught.value)
    assert message is not None and message.startswith(f"{tmp_path}: ")
    assert "MiB free there" in message and ("no space left" in message or "quota" in message)


OUT_OF_MEMORY_AS_LIBRARIES_REPORT_IT = [
    MemoryError(),  # Python's allocator
    OSError(errno.ENOMEM, "Cannot allocate memory"),  # fork, mmap
    RuntimeError(  # torch loading safetensors weights under `ulimit -v` (seen in this suite)
        "unable to mmap 16624496 bytes from file </tmp/model/model.safetensors>: Cannot allocate memory (12)"
    ),
    RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
        "allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)"
    ),  # fmt: skip
    RuntimeError("std::bad_alloc"),  # a C++ extension
    SafetensorError(
        "Error while deserializing header: "
        'IoError(Os { code: 12, kind: OutOfMemory, message: "Cannot allocate memory" })'
    ),  # fmt: skip
]


@pytest.mark.parametrize("error", OUT_OF_MEMORY_AS_LIBRARIES_REPORT_IT, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("wrapped", [False, True])
def test_the_boundary_reads_every_library_s_out_of_memory_as_one_line(error, wrapped):
    if wrapped:  # raised again by a library as its own error, the allocation failure as its cause
        outer = ValueError("could not load the model")
        outer.__cause__ = error
        error = outer
    message = user_message(error)
    assert message is not None and message.startswith("out of memory") and "ulimit -v" in message


def test_numpy_s_own_out_of_memory_is_read_as_one():
    import numpy as np

    with pytest.raises(MemoryError) as caught:
        np.empty(1 << 62, np.uint8)  # 4 EiB: no machine has it, so numpy refuses before touching memory
    assert user_message(caught.value).startswith("out of memory")


def test_a_bug_keeps_its_traceback():
    assert user_message(RuntimeError("shape mismatch")) is None
    assert user_message(OSError(errno.EIO, "Input/output error")) is None
