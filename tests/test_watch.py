"""training/record60/watch.py, the tool that carries the record's long runs across sessions:
its command line, its error paths, `status`, `save` and `restore` on a folder of runs, and
the 100 ms time slices it gives each run (`time_slice`).

`run` (a loop that launches trainings for hours) is not run here. `save` writes beside the
script, so the tests run a copy of it in a temporary folder and never touch the repository.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from barenet.nn.layers import Dense
from barenet.nn.model import Sequential
from barenet.train.checkpoint import EpochSoFar, save_checkpoint

WATCH = Path(__file__).resolve().parents[1] / "training" / "record60" / "watch.py"


def watch(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.fixture
def tool(tmp_path: Path) -> Path:
    """A copy of watch.py in a folder of its own: its `seed-K` folders land there."""
    (tmp_path / "tool").mkdir()
    return Path(shutil.copy(WATCH, tmp_path / "tool" / "watch.py"))


def finished_run(runs: Path, seed: int) -> Path:
    """A run folder as a finished training leaves it: model, history, run.json, the live page's
    log of every step (watch.json), no checkpoint."""
    where = runs / f"record60-seed-{seed}"
    where.mkdir(parents=True)
    made = [
        ("model.npz", "weights"),
        ("history.json", "[]"),
        ("run.json", "{}"),
        ("watch.json", "{}"),
    ]
    for name, text in made:
        (where / name).write_text(f"{name}: {text}")
    return where


def test_help_prints_the_usage(tool):
    p = watch(tool, "--help")
    assert p.returncode == 0, p.stderr
    assert "usage:" in p.stdout and "{run,status,save,restore}" in p.stdout


def test_an_unknown_command_is_refused_with_the_usage(tool, tmp_path):
    p = watch(tool, "stats", str(tmp_path / "runs"))
    assert p.returncode == 2
    assert "invalid choice: 'stats'" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["status", "save"])
def test_a_missing_runs_folder_is_one_line_and_is_not_created(tool, tmp_path, command):
    missing = tmp_path / "no-such-runs"
    p = watch(tool, command, str(missing))
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [f"watch.py: no runs' folder {missing}"]
    assert not missing.exists()


def test_status_names_each_seed(tool, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    finished_run(runs, 3)
    p = watch(tool, "status", str(runs))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "seed 0: not started",
        "seed 1: not started",
        "seed 2: not started",
        "seed 3: finished",
        "seed 4: not started",
    ]


def test_save_then_restore_carries_a_finished_run_without_its_checkpoint_or_step_log(
    tool, tmp_path
):
    runs = tmp_path / "runs"
    made = finished_run(runs, 2)
    stale = tool.parent / "seed-2"  # a checkpoint saved while it still trained
    stale.mkdir()
    (stale / "checkpoint.npz").write_text("old")
    p = watch(tool, "save", str(runs))
    assert p.returncode == 0, p.stderr
    assert sorted(q.name for q in stale.iterdir()) == ["history.json", "model.npz", "run.json"]
    assert not list(tool.parent.glob("seed-2/.*.tmp"))
    assert [q.name for q in tool.parent.glob("seed-*")] == ["seed-2"]

    elsewhere = tmp_path / "new-machine"
    p = watch(tool, "restore", str(elsewhere))
    assert p.returncode == 0, p.stderr
    back = elsewhere / "record60-seed-2"
    for name in ("model.npz", "history.json", "run.json"):
        assert (back / name).read_text() == (made / name).read_text()
    assert watch(tool, "status", str(elsewhere)).stdout.splitlines()[2] == "seed 2: finished"


def test_restore_leaves_a_run_already_there(tool, tmp_path):
    saved = tool.parent / "seed-0"
    saved.mkdir()
    (saved / "run.json").write_text("saved")
    runs = tmp_path / "runs"
    here = finished_run(runs, 0)
    p = watch(tool, "restore", str(runs))
    assert p.returncode == 0, p.stderr
    assert p.stdout == ""
    assert (here / "run.json").read_text() == "run.json: {}"


def test_status_reads_a_checkpoint_taken_inside_an_epoch(tool, tmp_path):
    """A checkpoint written by barenet itself, after 4 epochs and 100 steps into the fifth:
    4 x 1,875 + 100 = 7,600 of the recipe's 20 x 1,875 steps."""
    where = tmp_path / "runs" / "record60-seed-1"
    where.mkdir(parents=True)
    model = Sequential([Dense(4, 2, rng=np.random.default_rng(0))])
    order = np.arange(60_000, dtype=np.int64)
    save_checkpoint(where / "checkpoint.npz", epoch=4, recipe={}, rngs={}, history={},
                    model=model, optimizer_state={}, inside=EpochSoFar(order=order, step=100))  # fmt: skip
    p = watch(tool, "status", str(tmp_path / "runs"))
    assert p.returncode == 0, p.stderr
    line = p.stdout.splitlines()[1]
    assert line.startswith("seed 1: step 7,600 of 37,500 (4.05 epochs), checkpoint 20"), line


def test_a_reader_that_stops_early_gets_no_traceback(tool, tmp_path):
    """`watch.py status | head -1`: the pipe closes before the lines are written."""
    p = subprocess.Popen([sys.executable, str(tool), "status", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert p.stdout is not None
    p.stdout.close()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert err == ""


def slice_of(tid: int) -> int:
    """A thread's time slice, as sched_getattr(2) (x86-64 number 315) reads it back."""
    libc = ctypes.CDLL(None, use_errno=True)
    attr = ctypes.create_string_buffer(56)
    assert libc.syscall(315, tid, attr, 56, 0) == 0, os.strerror(ctypes.get_errno())
    return struct.unpack("IIQiIQQQII", attr.raw)[5]


@pytest.mark.skipif(
    platform.machine() != "x86_64" or tuple(map(int, platform.release().split(".")[:2])) < (6, 12),
    reason="a time slice of one's own is Linux 6.12's, on x86-64 by this system call number",
)
def test_time_slice_gives_every_thread_of_a_run_100_ms_and_takes_it_back(tool):
    spec = importlib.util.spec_from_file_location("watch_copy", tool)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start()"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(200):  # until its second thread has started (10 s at most)
            tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
            if len(tids) == 2:
                break
            time.sleep(0.05)
        assert len(tids) == 2
        own = [slice_of(t) for t in tids]  # the kernel's, a few ms
        assert all(0 < ns < module.SLICE_NS for ns in own)
        assert module.time_slice(child.pid)
        assert [slice_of(t) for t in tids] == [module.SLICE_NS] * 2
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == os.nice(0)  # its nice value kept
        assert module.time_slice(child.pid, 0)
        assert [slice_of(t) for t in tids] == own
    finally:
        child.kill()
        child.wait()
    assert not module.time_slice(child.pid)  # gone: nothing to set
