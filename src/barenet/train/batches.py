"""An epoch's batches: the rows of each step in the epoch's order, distorted by the recipe's
augmentation, and, for a student, its teacher's targets, made a chunk of steps at a time.

Without a teacher a chunk is one step, made as the step begins. With one, a chunk is
`TEACHER_CHUNK_STEPS` steps: their batches are augmented one after another, exactly as they
would be step by step (the same draws in the same order), and the teacher's networks then
predict for all of them in one pass (1,024 digits at batch 32) instead of one pass per batch.
Each digit's prediction depends on that digit alone (BatchNorm uses its running statistics),
so the targets are the ones the steps would get, to the rounding of a larger product. On a
GPU a pass of the teacher's four small networks over 32 digits took a third of a step
(docs/speed.md), far more than their arithmetic needs: the kernels are launched one by one
from Python, the same number for 32 digits as for 1,024. A chunk also goes to the GPU in
one transfer, not two a step.

Resuming within a chunk: a checkpoint holds the augmentation's generator as it stood when
the chunk began (`resume_point`), and the resumed run makes that chunk again, from its
start, so it sees the same batches and the same targets.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from ..nn.layers import Array
from ..nn.model import to_inputs
from .augment import Augment, augment
from .distill import Teacher

# Steps whose batches the teacher predicts for in one pass.
TEACHER_CHUNK_STEPS = 32


class EpochBatches:
    """The batches of one epoch, from step `start` (a chunk's first step) on.

    Arguments:
        flat: (N, D) uint8 (or float) training rows; labels: (N,) int64, in the epoch's order
            (labels[k] is the label of flat[order[k]]).
        order: (N,) the epoch's shuffled order of the rows.
        batch_size: B; image_shape: (H, W) of a row, for the augmentation.
        aug: the epoch's augmentation (None: the rows as they are); rng: its generator.
        teacher: the student's teacher, or None; xp: where the network is (numpy or cupy).
        start: the step the first chunk begins at (0, or a checkpoint's chunk start).
    """

    def __init__(
        self,
        flat: np.ndarray,
        labels: np.ndarray,
        order: np.ndarray,
        batch_size: int,
        image_shape: tuple[int, ...],
        aug: Augment | None,
        rng: np.random.Generator,
        teacher: Teacher | None,
        xp: ModuleType,
        start: int = 0,
    ) -> None:
        self.flat, self.labels, self.order, self.B = flat, labels, order, batch_size
        self.image_shape, self.aug, self.rng = image_shape, aug, rng
        self.teacher, self.xp = teacher, xp
        self.steps = -(-len(order) // batch_size)
        self.chunk_steps = TEACHER_CHUNK_STEPS if teacher is not None else 1
        self.chunk_start = start  # the chunk in hand: steps [chunk_start, chunk_stop)
        self.chunk_stop = start
        self.chunk_state: Mapping[str, Any] = rng.bit_generator.state  # rng at chunk_start
        # the chunk's inputs (rows, D) float32, labels (rows,) and the teacher's targets for
        # them (rows, C), where the network is: one transfer to a GPU a chunk, not two a step
        self.inputs: Array | None = None
        self.chunk_labels: Array | None = None
        self.targets: Array | None = None
        self.augment_seconds = 0.0  # spent augmenting, in all

    def batch(self, i: int) -> tuple[Array, Array, Array | None]:
        """Step i's inputs (B, D) float32 and labels (B,), on the network's array module, and
        the teacher's targets (B, C) for them (None without a teacher). Steps come in order."""
        if not i < self.steps:
            raise IndexError(f"step {i} of an epoch of {self.steps} steps")
        while i >= self.chunk_stop:
            self._make_chunk()
        if i < self.chunk_start:
            raise ValueError(f"steps come in order: step {i} after step {self.chunk_start}")
        assert self.inputs is not None and self.chunk_labels is not None
        rows = slice((i - self.chunk_start) * self.B, (i + 1 - self.chunk_start) * self.B)
        xb, yb = self.inputs[rows], self.chunk_labels[rows]  # only an epoch's last is short
        return xb, yb, None if self.targets is None else self.targets[rows]

    def resume_point(self, next_step: int) -> tuple[int, Mapping[str, Any]]:
        """For a checkpoint before step `next_step`: the step its epoch resumes making batches
        from (the start of the chunk in hand, or next_step itself where a chunk ends) and the
        augmentation generator's state there."""
        if self.chunk_start < next_step < self.chunk_stop:
            return self.chunk_start, self.chunk_state
        return next_step, self.rng.bit_generator.state

    def _make_chunk(self) -> None:
        """The chunk after the one in hand (the first: from `start`)."""
        i = self.chunk_stop
        self.chunk_start, self.chunk_stop = i, min(i + self.chunk_steps, self.steps)
        self.chunk_state = self.rng.bit_generator.state
        B, xp = self.B, self.xp
        batches = [self._rows(s) for s in range(self.chunk_start, self.chunk_stop)]
        self.inputs = xp.asarray(batches[0] if len(batches) == 1 else np.concatenate(batches))
        self.chunk_labels = xp.asarray(self.labels[self.chunk_start * B : self.chunk_stop * B])
        if self.teacher is not None:
            self.targets = self.teacher.targets(self.inputs)

    def _rows(self, step: int) -> np.ndarray:
        """Step `step`'s batch: its rows gathered in the epoch's order (uint8, a quarter of the
        float size: ~100 kB that stay in cache), augmented, as float32 in [0, 1]."""
        B = self.B
        rows = np.take(self.flat, self.order[step * B : (step + 1) * B], axis=0)  # (B, H*W)
        if self.aug is None:
            return to_inputs(rows)
        t0 = time.perf_counter()
        xb = augment(rows.reshape(-1, *self.image_shape), self.rng, self.aug)
        xb = xb.reshape(len(rows), -1)
        xb *= np.float32(1 / 255)
        self.augment_seconds += time.perf_counter() - t0
        return xb
