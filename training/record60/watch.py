"""Keep the `record` recipe's five 60,000-digit members training, a few at a time, and carry
their checkpoints across machines in the repository.

    python training/record60/watch.py run [RUNS]     keep them training (RUNS: ~/barenet-runs)
    python training/record60/watch.py status [RUNS]  where each run stands
    python training/record60/watch.py save [RUNS]    copy them into training/record60/seed-K
    python training/record60/watch.py restore [RUNS] copy training/record60/seed-K into RUNS

`save` copies each run's run.json with its last checkpoint (a run in progress) or its model.npz
and history (a finished one; not watch.json, the live page's log of every step) beside this
file, for a commit at a session's end: a new machine then continues from there (`restore`,
then `run`) instead of from the first step.

Every minute, for seeds 0-4 in order: a run with a checkpoint that is not running is resumed
(`barenet train --resume RUNS/record60-seed-K`); while fewer than `max` runs are alive, the next
seed that has not started is started (`barenet train --recipe record --seed K --members 1
--val-size 0`). A run is finished when its folder holds model.npz and no checkpoint.npz.
Each run gets one BLAS thread (two runs on two cores train faster than one run on both),
both OpenBLAS kernel overrides removed from its environment, checkpoints every 3 minutes, its
own log and pid file beside its folder, and 100 ms time slices (`time_slice`, set each minute).
`RUNS/watch.json` ({"seeds": [0, 1, 2, 3, 4], "max": 2}, written when missing; optionally
"slice_ms", 100 unless given, 0 for the kernel's own) is read every minute, so the plan can
change while it runs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from barenet.train.checkpoint import load_checkpoint

RUNS = Path.home() / "barenet-runs"  # or the command line's RUNS
HERE = Path(__file__).resolve().parent
BARENET = shutil.which("barenet", path=str(Path(sys.executable).parent)) or "barenet"
STEPS = 20 * 60_000 // 32  # the recipe's 20 epochs of batch 32
# Not carried from a finished run: its last checkpoint, and the live page's log of every step.
LEFT = {"checkpoint.npz", "watch.json"}


def folder(seed: int) -> Path:
    return RUNS / f"record60-seed-{seed}"


def pid_of(seed: int) -> int | None:
    """The run's process while it is alive, else None."""
    pid_file = RUNS / f"record60-seed-{seed}.pid"
    try:
        pid = int(pid_file.read_text())
        return pid if Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z" else None
    except (OSError, ValueError):
        return None


def alive(seed: int) -> bool:
    return pid_of(seed) is not None


SLICE_NS = 100_000_000  # 100 ms, the longest time slice Linux (6.12 on) gives a normal thread


def time_slice(pid: int, ns: int = SLICE_NS) -> bool:
    """Give each thread of `pid` a time slice of `ns` nanoseconds (0: the kernel's own again).

    More runs than cores share each core in the kernel's slices of about 1.4 ms, some 100
    switches a second a run, each leaving the next run a cache full of another's arrays; with
    100 ms slices they switch about 25 times a second, on the same arithmetic (docs/scale.md,
    "More runs than cores": 8-11% off the CPU time of a step on an Ice Lake). sched_setattr(2)
    by its x86-64 number, 314: the 56-byte struct sched_attr, policy SCHED_OTHER (0), the
    thread's nice value kept, sched_runtime (byte 24) the slice. False where that is not
    possible (another architecture, a thread gone, a refusal).
    """
    if platform.machine() != "x86_64" or not Path(f"/proc/{pid}/task").is_dir():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        for tid in map(int, os.listdir(f"/proc/{pid}/task")):
            nice = os.getpriority(os.PRIO_PROCESS, tid)
            attr = struct.pack("IIQiIQQQII", 56, 0, 0, nice, 0, ns, 0, 0, 0, 0)
            if libc.syscall(314, tid, ctypes.create_string_buffer(attr, 56), 0) != 0:
                return False
    except OSError:
        return False
    return True


def finished(seed: int) -> bool:
    return (folder(seed) / "model.npz").exists() and not (folder(seed) / "checkpoint.npz").exists()


def launch(seed: int, resume: bool) -> None:
    where = folder(seed)
    if resume:
        args = [BARENET, "train", "--resume", str(where)]
    else:
        args = [BARENET, "train", "--recipe", "record", "--seed", str(seed), "--members", "1",
                "--val-size", "0", "--out", str(where)]  # fmt: skip
    args += ["--checkpoint-minutes", "3", "--no-progress"]
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    }
    env["OPENBLAS_NUM_THREADS"] = "1"
    with open(RUNS / f"record60-seed-{seed}.log", "a") as log:
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                             start_new_session=True)  # fmt: skip
    (RUNS / f"record60-seed-{seed}.pid").write_text(str(p.pid))
    print(time.strftime("%F %T"), "resumed" if resume else "started", f"seed {seed}, pid {p.pid}",
          flush=True)  # fmt: skip


def standing(seed: int) -> str:
    """'finished', 'not started' or the run's step and epoch at its last checkpoint."""
    if finished(seed):
        return "finished"
    checkpoint = folder(seed) / "checkpoint.npz"
    if not checkpoint.exists():
        return "not started"
    state = load_checkpoint(checkpoint)
    step = state.epoch * STEPS // 20 + (state.inside.step if state.inside else 0)
    when = time.strftime("%F %T", time.localtime(checkpoint.stat().st_mtime))
    return f"step {step:,} of {STEPS:,} ({step * 20 / STEPS:.2f} epochs), checkpoint {when}"


def status() -> None:
    for s in range(5):
        print(f"seed {s}: {standing(s)}{' (running)' if alive(s) else ''}")


def save() -> None:
    """Copy each run into HERE/seed-K (temporary name, then rename: never half-written)."""
    for s in range(5):
        keep = ["run.json", "checkpoint.npz"] if not finished(s) else None
        if keep and not (folder(s) / "checkpoint.npz").exists():
            continue  # not started, or started but not checkpointed yet
        names = keep or [p.name for p in folder(s).iterdir() if p.name not in LEFT]
        target = HERE / f"seed-{s}"
        target.mkdir(exist_ok=True)
        for name in names:
            tmp = target / f".{name}.tmp"
            shutil.copyfile(folder(s) / name, tmp)
            tmp.replace(target / name)
        if keep is None:
            (target / "checkpoint.npz").unlink(missing_ok=True)
        print(f"seed {s}: {', '.join(names)} -> {target}")


def restore() -> None:
    """Copy HERE/seed-K into RUNS/record60-seed-K where RUNS has no such folder yet."""
    for s in range(5):
        source = HERE / f"seed-{s}"
        if source.exists() and not folder(s).exists():
            shutil.copytree(source, folder(s))
            print(f"seed {s}: {source} -> {folder(s)}")


def run() -> None:
    settings = RUNS / "watch.json"
    if not settings.exists():
        settings.write_text(json.dumps({"seeds": [0, 1, 2, 3, 4], "max": 2}))
    sliced: dict[int, int] = {}  # pid: the slice it was given
    while True:
        plan = json.loads(settings.read_text())
        running = [s for s in plan["seeds"] if alive(s)]
        for s in plan["seeds"]:
            if s in running or finished(s):
                continue
            if (folder(s) / "checkpoint.npz").exists():
                launch(s, resume=True)
                running.append(s)
            elif len(running) < plan["max"] and not (folder(s) / "model.npz").exists():
                if folder(s).exists():  # it died before its first checkpoint: start again
                    shutil.rmtree(folder(s))
                launch(s, resume=False)
                running.append(s)
        ns = int(plan["slice_ms"] * 1_000_000) if "slice_ms" in plan else SLICE_NS
        for s in running:  # each minute: a run's threads may have changed
            pid = pid_of(s)
            if pid is not None and time_slice(pid, ns) and sliced.get(pid) != ns:
                sliced[pid] = ns
                what = f"{ns / 1e6:g} ms time slices" if ns else "the kernel's time slices"
                print(time.strftime("%F %T"), f"seed {s}: {what}", flush=True)
        try:  # collect the runs that ended
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        time.sleep(60)


if __name__ == "__main__":
    commands = {"run": run, "status": status, "save": save, "restore": restore}
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=commands)
    parser.add_argument("runs", nargs="?", default=RUNS, type=Path, metavar="RUNS",
                        help=f"the runs' folder (default {RUNS})")  # fmt: skip
    args = parser.parse_args()
    RUNS = args.runs.resolve()
    if args.command in ("run", "restore"):
        RUNS.mkdir(parents=True, exist_ok=True)
    elif not RUNS.is_dir():
        sys.exit(f"watch.py: no runs' folder {RUNS}")
    try:
        commands[args.command]()
        sys.stdout.flush()
    except BrokenPipeError:  # `watch.py status | head -2`: the reader has gone, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
