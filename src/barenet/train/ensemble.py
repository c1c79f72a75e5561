"""Ensembles: several networks vote by averaging their class probabilities.

For models m = 1..K with softmax outputs p_m(x), the ensemble predicts
    p(x) = (1/K) sum_m p_m(x),   class(x) = argmax_c p(x)_c.
Averaging probabilities (not votes) lets a confident member outweigh an unsure one; it is the
rule of the committees of Ciresan et al. (2012) and Wan et al. (2013).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from ..backend.arrays import array_module
from ..backend.blas import one_blas_thread
from ..backend.threads import limited, threads
from ..errors import BarenetError
from ..files.modelfile import load_model, resolve_all
from ..nn.model import INFERENCE_BYTES, Sequential

# An ensemble member's working memory at inference (its batches): half of what a network alone
# takes (`INFERENCE_BYTES`), so that two members side by side take what one network does.
MEMBER_BYTES = INFERENCE_BYTES // 2


def load_ensemble(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[list[Sequential], list[dict[str, Any]]]:
    """Load every model that `paths` name (files, run directories, ensemble run directories).

    Raises: ModelFileError for a bad file; BarenetError if the models do not agree on their
    input size, their number of classes or their dataset.
    """
    files = [file for path in paths for file in resolve_all(path)]
    if not files:
        raise BarenetError("no model given")
    loaded = [load_model(file) for file in files]
    models, metas = [m for m, _ in loaded], [meta for _, meta in loaded]
    first, dataset = models[0], dataset_name(metas[0])
    for model, meta, file in zip(models[1:], metas[1:], files[1:]):
        if model.input_size != first.input_size or model.num_classes != first.num_classes:
            raise BarenetError(f"{file}: its input or output size differs from the other models'")
        if dataset_name(meta) != dataset:
            raise BarenetError(f"{file}: trained on {dataset_name(meta)}, the others on {dataset}")
    return models, metas


def dataset_name(meta: dict[str, Any]) -> str | None:
    """The name of the dataset a model's metadata says it was trained on, None if it names none."""
    d = meta.get("dataset")
    return d.get("name") if isinstance(d, dict) else None


def average_proba(
    models: Sequence[Sequential],
    x: np.ndarray,
    temperature: float = 1.0,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """x: (N, D) inputs -> the members' mean class probabilities, shape (N, C):
    (1/K) sum_m softmax(z_m / T), at temperature T (1: as they predict), summed in the
    members' order (`members_proba`: they run side by side). progress(n) is called after each
    batch of n inputs a member has been through."""
    total = _summed(members_proba(models, x, temperature, progress))
    total /= len(models)
    return total


def _summed(probas: list[np.ndarray]) -> np.ndarray:
    """The members' probabilities added in their order, into the first one's array."""
    total = probas[0]
    for proba in probas[1:]:
        total += proba
    return total


SLACK = 1e-4  # far above the rounding of a sum of a few float32 probabilities (about 1e-6)


def deciding_members(K: int) -> int:
    """How many of K members `ensemble_classes` asks about every input: K // 2 + 1, the fewest
    whose vote can be settled (a lead of at most k must exceed the K - k still to come); all
    K below three."""
    return K if K < 3 else K // 2 + 1


def ensemble_classes(
    models: Sequence[Sequential],
    x: np.ndarray,
    progress: Callable[[int], object] | None = None,
    planned: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, int]:
    """The ensemble's classes for x (N, D), argmax_c of the members' mean probabilities as
    `average_proba` gives them, with the later members asked only where the first leave the
    vote open. Returns (classes (N,), open): open is how many inputs the later members saw.

    Why that is the same answer. A member's probabilities lie in [0, 1]. After the first k of
    K members, with sums S_c, the K - k still to come add between 0 and K - k to each class, so
    the lead of the top class t over any other c changes by at most K - k:
        sum_m p_m,t - sum_m p_m,c  >=  (S_t - S_c) - (K - k).
    Where S_t - S_c > K - k (plus SLACK, for rounding) for every c, t is the ensemble's class,
    whatever the others say. k = K // 2 + 1 (`deciding_members`), the fewest for which that
    can happen (a lead of at most k must exceed K - k): 3 of 5 members, 3 of 4, 2 of 3. On
    MNIST nearly every image is settled so (the five `record` members: 9,928 of the 10,000
    test digits after three), and the last members look at the few that are not.

    The classes equal `average_proba(models, x).argmax(1)` except, possibly, for an input on
    which two classes' averages tie to within float32 rounding: an input left open goes through
    the later members in other batches than all inputs would, and the products of a batch
    round in its own way (differences of about 1e-7). progress(n): after each batch of n
    inputs a member has been through; planned(n): before each of the two stages, with the
    number of (member, input) pairs it will go through."""
    K, N, k = len(models), len(x), deciding_members(len(models))
    if planned is not None:
        planned(k * N)
    if k == K:  # every member must vote: nothing can be settled before the last
        return average_proba(models, x, progress=progress).argmax(axis=1), 0
    total = _summed(members_proba(models[:k], x, progress=progress))  # as `average_proba`
    xp = array_module(total)
    two = -xp.partition(-total, 1, axis=1)[:, :2]  # each row's two largest sums
    undecided = xp.flatnonzero(two[:, 0] - two[:, 1] <= (K - k) + SLACK)
    if len(undecided):
        if planned is not None:
            planned((K - k) * len(undecided))
        for proba in members_proba(models[k:], x[undecided], progress=progress):
            total[undecided] += proba
    total /= K
    return total.argmax(axis=1), len(undecided)


def members_proba(
    models: Sequence[Sequential],
    x: np.ndarray,
    temperature: float = 1.0,
    progress: Callable[[int], object] | None = None,
) -> list[np.ndarray]:
    """Each member's class probabilities for x (N, D), in order: softmax(z_m / T), (N, C).

    On the CPU with two cores or more the members run side by side, each in a thread of its
    own (`threads.limited`): one core each while several run, no lanes within their
    convolutions, every product on one BLAS thread. Why: within one member the cores split each
    convolution and wait for each other at every layer; members side by side do not wait at
    all (docs/speed.md: a fifth less time for two `record` members on two cores). Where the
    members do not fill the last round (three on two cores), each of the last ones is cut into
    parts of whole batches, one a core (`_jobs`); and the cores a part finishing leaves go to
    those still running (the last splits its convolutions over all of them again).

    Each member of several works in batches of `MEMBER_BYTES`, on every machine, a part being
    whole batches of those: the probabilities are the same, bit for bit, whether the members
    run side by side or one after the other, in parts or whole, on any number of cores, every
    product on one BLAS thread (OpenBLAS splitting one product over its own threads may round
    it otherwise in the last bit with some kernels: one member alone is not bound to match
    these bits, only to agree within float32 rounding). progress(n) is called
    after each batch of n inputs a member has been through, from one thread at a time. An
    error in one member (or Ctrl-C) stops the others after their current batch."""
    if len(models) == 1:
        return [models[0].predict_proba(x, temperature=temperature, progress=progress)]
    cpus = threads() if array_module(x) is np else 1
    if min(len(models), cpus) < 2:
        return [m.predict_proba(x, m.inference_batch(MEMBER_BYTES), temperature, progress)
                for m in models]  # fmt: skip
    jobs = _jobs(models, len(x), cpus)
    lock, stop = threading.Lock(), threading.Event()
    unfinished = len(jobs)  # jobs not finished yet

    def share() -> int:  # the cores each running job may use now
        return cpus // min(cpus, unfinished)

    def batch_done(n: int) -> None:
        if stop.is_set():
            raise _Stopped
        if progress is not None:
            with lock:
                progress(n)

    def job(m: int, net: Sequential, lo: int, hi: int) -> np.ndarray:
        nonlocal unfinished
        try:
            with limited(share):  # the member's batches, whichever network runs the part
                return net.predict_proba(x[lo:hi], models[m].inference_batch(MEMBER_BYTES),
                                         temperature, batch_done)  # fmt: skip
        finally:
            with lock:
                unfinished -= 1

    with one_blas_thread():
        pool = ThreadPoolExecutor(min(cpus, len(jobs)), thread_name_prefix="barenet-member")
        try:
            futures = [pool.submit(job, *j) for j in jobs]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:  # the first error, raised here, stops the others
                if future.done() and future.exception() is not None:
                    future.result()
            parts: list[list[np.ndarray]] = [[] for _ in models]
            for (m, *_), future in zip(jobs, futures, strict=True):
                parts[m].append(future.result())
            return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]
        finally:
            stop.set()  # after an error or Ctrl-C here, the others stop at their next batch
            pool.shutdown(wait=True, cancel_futures=True)


def _jobs(
    models: Sequence[Sequential], N: int, cpus: int
) -> list[tuple[int, Sequential, int, int]]:
    """The work of K members on N inputs for `cpus` cores, in order: (member, model, lo, hi),
    a member's inputs [lo, hi). Whole members, `cpus` at a time, while they fill a round; each
    of the r members of a last, short round (K mod cpus of them) cut into cpus / gcd(r, cpus)
    parts of whole batches (`MEMBER_BYTES`; fewer if it has fewer batches), so that the parts
    fill whole rounds, each part with a network of its own (`_twin`). Three members on two
    cores: 1 and 2 side by side, then the two halves of 3; three on four cores: four
    quarters of each."""
    K = len(models)
    jobs = [(m, models[m], 0, N) for m in range(K - K % cpus)]
    last = range(K - K % cpus, K)
    for m in last:
        B = models[m].inference_batch(MEMBER_BYTES)
        batches = -(-N // B)
        pieces = max(1, min(batches, cpus // math.gcd(len(last), cpus)))
        try:
            nets = [models[m]] + [_twin(models[m]) for _ in range(pieces - 1)]
        except ValueError:  # a layer its config cannot rebuild: the member runs whole
            nets, pieces = [models[m]], 1
        bounds = [min(N, B * (batches * i // pieces)) for i in range(pieces + 1)]
        jobs += [(m, net, lo, hi) for net, lo, hi in zip(nets, bounds, bounds[1:], strict=False)]
    return jobs


def _twin(model: Sequential) -> Sequential:
    """A network that computes what `model` does at inference, for another thread: layers of
    its own (a layer keeps per-pass state, so two threads never share one) around the same
    weight and running-statistics arrays (only read at inference: not copied)."""
    twin = Sequential.from_config(model.config())
    twin.fast = model.fast
    for new, old in zip(twin.layers, model.layers, strict=True):
        new.params, new.buffers = old.params, old.buffers
    return twin


class _Stopped(Exception):
    """A member stopped early because another failed or the caller was interrupted."""
