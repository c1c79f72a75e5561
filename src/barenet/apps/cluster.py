"""`barenet train --members N --ray [ADDRESS]`: an ensemble's members trained in parallel, each
a Ray task, on this machine (`local`) or on a running Ray cluster (docs/scale.md).

What stays as in a sequential run:
- each member is `barenet.train.loop.fit` with the member's seed, so with the same BLAS thread
  count it ends with the same weights, bit for bit (tests/test_ray.py);
- the data: the driver loads it (checksums verified, or one's own data prepared) and puts it
  in Ray's object store once; every task reads that copy, never a file of its own;
- checkpoints: each task checkpoints into its member's folder of the run directory; Ray
  retries a task whose worker died (MAX_RETRIES), and the retry resumes from the checkpoint.
  On a cluster, put the run directory on storage every node sees (NFS, a shared volume), or a
  retried member starts over on another node;
- the files: a task returns its model and history to the driver, which writes them as a
  sequential run does.

Progress: the tasks send their epoch lines through a Ray queue; the driver prints them, one
line per member and epoch. Ray is an optional dependency (`pip install '.[ray]'`): this module
and apps/sweep.py are the only ones that import it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..data.datasets import Dataset
from ..errors import BarenetError
from ..files.modelfile import member_folder
from ..train.loop import Result, fit
from ..train.recipes import Recipe

MAX_RETRIES = 3  # a member whose worker dies is tried again, from its checkpoint, this often
INSTALL = (
    "Ray is not installed: pip install 'barenet[ray]' (or, in a checkout, pip install '.[ray]')"
)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise BarenetError(INSTALL) from None
    return ray


def _reachable(address: str) -> None:
    """A clear error, at once, for an address that is not host:port or where nothing listens
    (Ray itself would retry for minutes)."""
    if address == "auto":  # Ray's own: the cluster this machine belongs to
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise BarenetError(f"--ray {address!r}: give 'local' or a cluster's head as HOST:PORT "
                           "(the address `ray start --head` prints)")  # fmt: skip
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise BarenetError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}") from None


def connect(address: str, ray: Any) -> None:
    """Start Ray on this machine (`local`) or join the cluster at `address` (host:port)."""
    if ray.is_initialized():
        return
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                  configure_logging=True)  # fmt: skip
    try:
        if address == "local":
            # Ray runs its workers at nice 15 by default: beside any other work they would
            # crawl. Members are the main job here, as a sequential run's would be.
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=os.cpu_count(), **kwargs)
        else:
            _reachable(address)
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise BarenetError(
            f"cannot reach a Ray cluster at {address}: {e}".splitlines()[0]
        ) from None


def _member(recipe: dict[str, Any], dataset: Dataset, k: int, where: str, checkpoint_seconds: float,
            threads: int, queue: Any) -> Result:  # fmt: skip
    """One member, in a Ray worker: fit with the member's seed, checkpointing into `where`,
    resuming from its checkpoint when there is one (a retry after a worker died, or --resume)."""
    from threadpoolctl import threadpool_limits

    member = Recipe.from_dict(recipe)
    folder = Path(where)
    folder.mkdir(parents=True, exist_ok=True)
    queue.put((k, f"started (seed {member.seed + k}, pid {os.getpid()}, {threads} BLAS "
                  f"thread{'s' if threads > 1 else ''})"))  # fmt: skip
    with threadpool_limits(threads):
        return fit(member, dataset, seed=member.seed + k, progress=False,
                   log=lambda line: queue.put((k, line)), checkpoint=folder / "checkpoint.npz",
                   resume=True, checkpoint_seconds=checkpoint_seconds)  # fmt: skip


def train_members_on_ray(
    address: str,
    recipe: Recipe,
    dataset: Dataset,
    out: Path,
    members: list[int],
    *,
    checkpoint_minutes: float,
    threads: int,
    say: Callable[[str], None],
) -> Iterator[tuple[int, Result]]:
    """Train `members` (0-based indices) of `recipe` as Ray tasks; yield (k, result) as each
    finishes. Raises BarenetError when Ray is missing or the cluster unreachable, or a member
    fails for good."""
    ray = import_ray()
    from ray.util.queue import Empty, Queue

    connect(address, ray)
    resources = ray.cluster_resources()
    say(f"Ray: {len(ray.nodes())} node(s), {resources.get('CPU', 0):g} CPUs; {len(members)} "
        f"member(s) as tasks of {threads} CPU(s) each")  # fmt: skip
    task = ray.remote(num_cpus=threads, max_retries=MAX_RETRIES)(_member)
    queue = Queue()
    data = ray.put(dataset)
    pending = {}
    for k in members:
        where = member_folder(out, recipe.members, k)
        ref = task.remote(recipe.to_dict(), data, k, str(where.resolve()),
                          60 * checkpoint_minutes, threads, queue)  # fmt: skip
        pending[ref] = k

    def drain() -> None:
        while True:
            try:
                k, line = queue.get_nowait()
            except Empty:
                return
            say(f"member {k + 1}/{recipe.members}: {line}")

    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            drain()
            for ref in done:
                k = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise BarenetError(f"member {k + 1} failed after {MAX_RETRIES} retries: "
                                       f"{str(e).splitlines()[0]}") from None  # fmt: skip
                drain()
                yield k, result
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
