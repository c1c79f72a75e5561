"""Ensembles: several networks vote by averaging their class probabilities.

For models m = 1..K with softmax outputs p_m(x), the ensemble predicts
    p(x) = (1/K) sum_m p_m(x),   class(x) = argmax_c p(x)_c.
Averaging probabilities (not votes) lets a confident member outweigh an unsure one; it is the
rule of the committees of Ciresan et al. (2012) and Wan et al. (2013).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import BarenetError
from ..files.modelfile import load_model, resolve_all
from ..nn.model import Sequential


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
    (1/K) sum_m softmax(z_m / T), at temperature T (1: as they predict). progress(n) is
    called after each batch of n inputs a member has been through
    (`Sequential.predict_proba`)."""
    total = models[0].predict_proba(x, temperature=temperature, progress=progress)
    for model in models[1:]:
        total += model.predict_proba(x, temperature=temperature, progress=progress)
    total /= len(models)
    return total
