"""Weight averaging: an exponential moving average of the weights over the steps of training.

After every optimiser step each parameter's average moves towards the parameter (Polyak and
Juditsky 1992; the "EMA" many large training recipes keep beside their weights):

    w_bar_t = d_t w_bar_{t-1} + (1 - d_t) w_t,    d_t = min(decay, (1 + t) / (10 + t))

t counts the updates from 0 and w_bar_0 is the initial weights. The ramp (1 + t) / (10 + t)
lets the average forget the initial weights quickly at first; after that the average spans
about 1 / (1 - decay) steps (decay 0.9998: half of its weight on the last 3,466 steps, two
epochs of 55,000 at batch 32). The averaged weights sit nearer the middle of the region the
noisy steps wander in, where the loss is often flatter and the net generalises a little better
than any single iterate.

BatchNorm's running statistics are not averaged: they belong to one set of weights, so the
training loop recalibrates them on clean images for the averaged weights
(`loop.recalibrate_batchnorm`), as it does for the trained ones.

The averages are kept in float64: with decay near 1 a float32 average would round away the
small (1 - d) increments.
"""

from __future__ import annotations

import numpy as np

from ..backend.arrays import array_module
from ..nn.model import Sequential


class WeightAverage:
    """The running average of every trainable parameter of `model` (named as
    `model.parameters()` names them), updated by `update()` after each optimiser step."""

    def __init__(self, model: Sequential, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the average's decay must be in (0, 1), not {decay!r}")
        self.decay = decay
        self.count = 0  # t: updates so far
        self.average = {name: p.astype(np.float64) for name, p, _ in model.parameters()}
        self._params = {name: p for name, p, _ in model.parameters()}

    def update(self) -> None:
        """One step: w_bar <- d w_bar + (1 - d) w, with d = min(decay, (1 + t) / (10 + t))."""
        d = min(self.decay, (1 + self.count) / (10 + self.count))
        for name, p in self._params.items():
            a = self.average[name]
            a += (1 - d) * (p - a)  # = d a + (1 - d) p
        self.count += 1

    def swap(self, model: Sequential) -> dict[str, np.ndarray]:
        """Put the averaged weights into `model`; returns what they replaced, parameters and
        buffers (BatchNorm's running statistics), for `restore`."""
        saved = {name: p.copy() for name, p, _ in model.parameters()}
        saved.update({name: b.copy() for name, b in model.buffers()})
        for name, p, _ in model.parameters():
            p[...] = self.average[name]
        return saved

    @staticmethod
    def restore(model: Sequential, saved: dict[str, np.ndarray]) -> None:
        """Undo `swap`: the trained weights and their running statistics, as they were."""
        for name, p, _ in model.parameters():
            p[...] = saved[name]
        for name, b in model.buffers():
            b[...] = saved[name]

    def state(self) -> dict[str, np.ndarray]:
        """The arrays a checkpoint saves: each average and the update count."""
        return {**self.average, "count": np.array(self.count)}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore `state()`'s arrays; KeyError or ValueError if they do not fit the model."""
        for name, a in self.average.items():
            src = state[name]
            if src.shape != a.shape:
                raise ValueError(f"the average of {name} has shape {src.shape}, "
                                 f"the network needs {a.shape}")  # fmt: skip
            a[...] = array_module(a).asarray(src)
        self.count = int(state["count"])
