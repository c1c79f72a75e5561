"""Ray: an ensemble's members as Ray tasks (on this machine, on a two-node cluster started here
on loopback, and with a worker killed mid-member) end with the weights of a sequential run at
the same thread count; `barenet sweep` runs its trials on Ray Tune, scores them on validation,
writes results.csv and best.json, and resumes; without Ray, one line says what to install."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from barenet.apps.cli import main
from barenet.files.modelfile import load_model
from barenet.train.recipes import RECIPES

ray = pytest.importorskip("ray", reason="Ray is in the test extra: pip install '.[test]'")

ENV = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "RAY_worker_niceness": "0"}


def barenet(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "barenet", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or ENV)  # fmt: skip


def same_weights(a: Path, b: Path) -> bool:
    x, _ = load_model(a)
    y, _ = load_model(b)
    return all(np.array_equal(p, q) for (_, p, _), (_, q, _) in zip(x.parameters(), y.parameters()))


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, mnist):
    """Two one-epoch members of `seed`, trained one after the other with one BLAS thread."""
    out = tmp_path_factory.mktemp("seq") / "run"
    p = barenet("train", "--members", "2", "--epochs", "1", "--out", str(out), "--no-progress")
    assert p.returncode == 0, p.stderr
    return out


def test_members_on_local_ray_are_those_of_a_sequential_run(tmp_path, sequential):
    out = tmp_path / "run"
    p = barenet("train", "--members", "2", "--epochs", "1", "--out", str(out), "--no-progress",
                "--ray")  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "Ray: 1 node(s)" in p.stderr
    for k in (1, 2):  # one line per member as it advances
        assert re.search(
            rf"member {k}/2: started \(seed {k - 1}, pid \d+, 1 BLAS thread\)", p.stderr
        )
        assert re.search(rf"member {k}/2: epoch 1/1 ", p.stderr)
        assert same_weights(out / f"member-{k}" / "model.npz",
                            sequential / f"member-{k}" / "model.npz")  # fmt: skip
    assert json.loads((out / "ensemble.json").read_text())["members"] == [
        "member-1/model.npz", "member-2/model.npz"]  # fmt: skip


def test_members_on_a_two_node_cluster(tmp_path, sequential):
    from ray.cluster_utils import Cluster

    os.environ["RAY_worker_niceness"] = "0"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        out = tmp_path / "run"
        p = barenet("train", "--members", "2", "--epochs", "1", "--out", str(out),
                    "--no-progress", "--ray", cluster.address)  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert "Ray: 2 node(s), 2 CPUs" in p.stderr
        pids = re.findall(r"started \(seed \d, pid (\d+)", p.stderr)
        assert len(set(pids)) == 2  # two workers
        for k in (1, 2):
            assert same_weights(out / f"member-{k}" / "model.npz",
                                sequential / f"member-{k}" / "model.npz")  # fmt: skip
    finally:
        cluster.shutdown()


def test_a_killed_worker_resumes_its_member_from_the_checkpoint(tmp_path, mnist):
    """SIGKILL the worker training member 1 once a checkpoint exists: Ray retries the task, it
    resumes from the checkpoint, and the member ends as an uninterrupted run's."""
    out, straight = tmp_path / "run", tmp_path / "straight"
    args = ["--epochs", "2", "--no-progress", "--checkpoint-minutes", "0.005"]
    s = barenet("train", *args, "--out", str(straight))
    assert s.returncode == 0, s.stderr
    proc = subprocess.Popen([sys.executable, "-m", "barenet", "train", *args, "--out", str(out),
                             "--ray"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=ENV)  # fmt: skip
    lines: list[str] = []
    pid = None
    deadline = time.monotonic() + 300
    while pid is None:
        line = proc.stderr.readline()
        assert line or proc.poll() is None, "".join(lines)
        lines.append(line)
        found = re.search(r"started \(seed 0, pid (\d+)", line)
        pid = int(found.group(1)) if found else None
        assert time.monotonic() < deadline
    while not (out / "checkpoint.npz").exists():  # a checkpoint within the first epoch
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(pid, signal.SIGKILL)
    stdout, rest = proc.communicate(timeout=600)
    log = "".join(lines) + rest + stdout
    assert proc.returncode == 0, log
    assert len(re.findall(r"member 1/1: started", log)) == 2, log  # tried again
    assert "resuming from" in log  # from the checkpoint, not from scratch
    assert same_weights(out / "model.npz", straight / "model.npz")


def test_a_sweep_of_four_trials_chooses_on_validation_and_resumes(tmp_path, mnist):
    out = tmp_path / "sweep"
    args = ["sweep", "--grid", "lr=0.05,0.2", "--grid", "batch_size=128,256", "--epochs", "1",
            "--out", str(out)]  # fmt: skip
    p = barenet(*args)
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows)
    assert {(r["lr"], r["batch_size"]) for r in rows} == {
        ("0.05", "128"), ("0.05", "256"), ("0.2", "128"), ("0.2", "256")}  # fmt: skip
    assert len(re.findall(r"^trial \S+: lr=", p.stderr, flags=re.M)) == 4  # a row as each ends
    best = max(rows, key=lambda r: float(r["val_mean"]))
    recipe = json.loads((out / "best.json").read_text())
    assert recipe["lr"] == float(best["lr"]) and recipe["batch_size"] == int(best["batch_size"])
    assert f"validation {100 * float(best['val_mean']):.2f}%" in p.stdout
    # the best recipe trains as any recipe
    t = barenet("train", "--recipe", str(out / "best.json"), "--epochs", "1", "--out",
                str(tmp_path / "best"), "--no-progress")  # fmt: skip
    assert t.returncode == 0, t.stderr
    # run again: it resumes, with nothing left to run, and chooses the same
    again = barenet(*args)
    assert again.returncode == 0 and "resuming the sweep" in again.stderr
    assert json.loads((out / "best.json").read_text()) == recipe


def test_a_sweep_with_seeds_and_asha(tmp_path, mnist):
    out = tmp_path / "sweep"
    p = barenet("sweep", "--random", "2", "--space", "lr=0.02:0.3:log", "--seeds", "2",
                "--epochs", "1", "--asha", "--out", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr
    rows = list(csv.DictReader((out / "results.csv").read_text().splitlines()))
    assert len(rows) == 2
    for r in rows:
        assert 0.02 <= float(r["lr"]) <= 0.3
        if r["status"] == "finished":
            assert r["seeds"] == "2" and float(r["val_std"]) >= 0


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["sweep", "--grid", "colour=red"], "not a recipe field"),
        (["sweep", "--grid", "lr=fast"], "'fast' is not a value of this field"),
        (["sweep", "--grid", "optimizer=sgd,rmsprop"], "optimizer=rmsprop: invalid optimizer"),
        (["sweep", "--space", "lr=0.1:0.01", "--random", "2"], "needs LOW < HIGH"),
        (["sweep", "--space", "lr=0.1:1"], "--space ranges need --random N"),
        (["sweep"], "nothing to sweep"),
        (["train", "--ray", "--watch"], "give one of them"),
        (["train", "--ray", "127.0.0.1:1", "--members", "2"], "cannot reach a Ray cluster"),
    ],
)
def test_bad_sweeps_and_addresses_are_one_line(tmp_path, args, fragment):
    p = barenet(*args, "--out", str(tmp_path / "out"), timeout=180)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert fragment in p.stderr.strip().splitlines()[-1]


def test_a_sweep_needs_a_validation_split(tmp_path, mnist):
    recipe = tmp_path / "all.json"
    recipe.write_text(json.dumps({**RECIPES["seed"].to_dict(), "val_size": 0}))
    p = barenet("sweep", "--recipe", str(recipe), "--grid", "lr=0.1,0.2", "--out",
                str(tmp_path / "out"), timeout=180)  # fmt: skip
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert "val_size 0 holds none out" in p.stderr.strip().splitlines()[-1]


def test_without_ray_one_line_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    assert main(["sweep", "--grid", "lr=0.1", "--out", str(tmp_path / "s")]) == 1
    assert "pip install 'barenet[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
