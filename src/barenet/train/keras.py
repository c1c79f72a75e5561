"""Keras-style training on a network: `net.fit(x, y, epochs=5, ...)`.

`barenet.Sequential` is the engine's `nn.Sequential` with this one method added; the training
loop it calls (`barenet.train.loop.train`) builds on the engine, never the other way round.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from ..nn import model
from .loop import History, train
from .recipes import Recipe


class Sequential(model.Sequential):
    """A stack of layers (`barenet.nn.model.Sequential`) that can train itself, Keras-style."""

    def fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 0.1,
        optimizer: str = "sgd",
        momentum: float = 0.9,
        l2: float = 1e-4,
        schedule: str = "cosine",
        label_smoothing: float = 0.0,
        max_norm: float = 0.0,
        validation_data: tuple[np.ndarray, np.ndarray] | None = None,
        seed: int = 0,
        verbose: bool = True,
    ) -> History:
        """Train in place; returns the per-epoch history.

        Arguments:
            x: (N, H, W) uint8 images (scaled by 1/255 here), or (N, D) float features.
            y: (N,) integer class labels in [0, C).
            optimizer: "sgd" (momentum, Nesterov), "adam" or "adamw"; lr: its peak rate.
            schedule: "constant", "step", "cosine" or "onecycle" over the epochs.
            validation_data: (x_val, y_val), measured after each epoch.
            verbose: a progress bar and one line per epoch on stderr.
        Raises: ValueError for inconsistent data; BarenetError for impossible settings.
        """
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 2 or y.shape != (len(x),):
            raise ValueError(f"x must be (N, ...) and y (N,): got {x.shape} and {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"labels must be integers in [0, {self.num_classes})")
        recipe = Recipe(name="fit", description="Sequential.fit", epochs=epochs,
                        batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                        nesterov=momentum > 0, l2=l2, schedule=schedule,
                        label_smoothing=label_smoothing, max_norm=max_norm, seed=seed)  # fmt: skip
        x_val, y_val = validation_data if validation_data is not None else (None, None)
        log = (lambda line: print(line, file=sys.stderr)) if verbose else None
        return train(self, recipe, x, y.astype(np.int64), x_val, y_val, progress=verbose, log=log)


def mlp(sizes: Sequence[int], *, rng: np.random.Generator, init: str = "he") -> Sequential:
    """`barenet.nn.model.mlp` as a network that can `fit`: Dense, ReLU, ..., Dense."""
    return Sequential(model.mlp(sizes, rng=rng, init=init).layers)
