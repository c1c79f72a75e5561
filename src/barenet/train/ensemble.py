"""Ensembles: several networks vote by averaging their class probabilities.

For models m = 1..K with softmax outputs p_m(x), the ensemble predicts
    p(x) = (1/K) sum_m p_m(x),   class(x) = argmax_c p(x)_c.
Averaging probabilities (not votes) lets a confident member outweigh an unsure one; it is the
rule of the committees of Ciresan et al. (2012) and Wan et al. (2013).
"""

from __future__ import annotations

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
    probas = members_proba(models, x, temperature, progress)
    total = probas[0]
    for proba in probas[1:]:
        total += proba
    total /= len(models)
    return total


def members_proba(
    models: Sequence[Sequential],
    x: np.ndarray,
    temperature: float = 1.0,
    progress: Callable[[int], object] | None = None,
) -> list[np.ndarray]:
    """Each member's class probabilities for x (N, D), in order: softmax(z_m / T), (N, C).

    On the CPU with two cores or more the members run side by side, each whole in a thread of
    its own (`threads.limited`): one core each while several run, no lanes within their
    convolutions, every product on one BLAS thread; the cores a member finishing leaves go to
    those still running (the last one splits its convolutions over all of them again). Why:
    within one member the cores split each convolution and wait for each other at every
    layer; members side by side do not wait at all (docs/speed.md: a fifth less time for two
    `record` members on two cores). Each member of several works in batches of
    `MEMBER_BYTES`, on every machine: the probabilities are the same, bit for bit, whether
    the members run side by side or one after the other, on any number of cores.
    progress(n) is called after each batch of n inputs a member has been through, from one
    thread at a time. An error in one member (or Ctrl-C) stops the others after their
    current batch."""
    if len(models) == 1:
        return [models[0].predict_proba(x, temperature=temperature, progress=progress)]
    cpus = threads() if array_module(x) is np else 1
    workers = min(len(models), cpus)
    if workers < 2:
        return [m.predict_proba(x, m.inference_batch(MEMBER_BYTES), temperature, progress)
                for m in models]  # fmt: skip
    lock, stop = threading.Lock(), threading.Event()
    unfinished = len(models)  # members not finished yet

    def share() -> int:  # the cores each running member may use now
        return cpus // min(workers, unfinished)

    def batch_done(n: int) -> None:
        if stop.is_set():
            raise _Stopped
        if progress is not None:
            with lock:
                progress(n)

    def member(model: Sequential) -> np.ndarray:
        nonlocal unfinished
        try:
            with limited(share):
                return model.predict_proba(x, model.inference_batch(MEMBER_BYTES), temperature,
                                           batch_done)  # fmt: skip
        finally:
            with lock:
                unfinished -= 1

    with one_blas_thread():
        pool = ThreadPoolExecutor(workers, thread_name_prefix="barenet-member")
        try:
            futures = [pool.submit(member, model) for model in models]
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:  # the first error, raised here, stops the others
                if future.done() and future.exception() is not None:
                    future.result()
            return [future.result() for future in futures]
        finally:
            stop.set()  # after an error or Ctrl-C here, the others stop at their next batch
            pool.shutdown(wait=True, cancel_futures=True)


class _Stopped(Exception):
    """A member stopped early because another failed or the caller was interrupted."""
