"""An epoch's batches: made a chunk at a time for a student, they are the batches made step by
step, with the teacher's targets for them."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import toy_digits

from barenet.train.augment import Augment
from barenet.train.batches import TEACHER_CHUNK_STEPS, EpochBatches
from barenet.train.distill import Teacher
from barenet.train.recipes import Recipe, build_model

RECIPE = Recipe(name="toy", description="toy", arch="cnn", conv=(4,), kernel_size=3,
                batchnorm=True, hidden=(8,), batch_size=8)  # fmt: skip
AUG = Augment(rotate=10, shift=1, shear=5)


def epoch(teacher, start=0, state=None, n=300):
    x, y = toy_digits(n)
    order = np.random.default_rng(1).permutation(n)
    rng = np.random.default_rng(2)
    if state is not None:
        rng.bit_generator.state = state
    return EpochBatches(x.reshape(n, -1), y[order].astype(np.int64), order, 8, (28, 28), AUG,
                        rng, teacher, np, start=start)  # fmt: skip


def test_a_students_chunks_are_the_batches_step_by_step_with_their_targets():
    teacher = Teacher([build_model(RECIPE, (28, 28), 3, seed=k) for k in range(2)], 4.0)
    chunked, alone = epoch(teacher), epoch(None)
    steps = -(-300 // 8)
    assert chunked.chunk_steps == TEACHER_CHUNK_STEPS > 1 and alone.chunk_steps == 1
    for i in range(steps):
        (xa, ya, ta), (xb, yb, tb) = chunked.batch(i), alone.batch(i)
        np.testing.assert_array_equal(xa, xb)  # the same draws, in the same order
        np.testing.assert_array_equal(ya, yb)
        assert tb is None and ta.shape == (len(ya), 3)
        np.testing.assert_allclose(ta, teacher.targets(xa), rtol=1e-5, atol=1e-7)
    assert len(ya) == 300 - 8 * (steps - 1)  # the epoch's last batch holds what is left


def test_a_resume_within_a_chunk_makes_it_again_from_its_start():
    teacher = Teacher([build_model(RECIPE, (28, 28), 3, seed=0)], 4.0)
    K = TEACHER_CHUNK_STEPS
    straight = epoch(teacher, n=600)  # 75 steps: chunks [0, K), [K, 2K), [2K, 75)
    for i in range(K + 3):
        straight.batch(i)
    chunk_start, state = straight.resume_point(K + 3)
    assert chunk_start == K  # within the second chunk: back to its start
    resumed = epoch(teacher, start=chunk_start, state=state, n=600)
    for i in range(K + 3, 2 * K + 5):  # on into the third chunk
        for a, b in zip(straight.batch(i), resumed.batch(i)):
            np.testing.assert_array_equal(a, b)
    for i in range(2 * K + 5, 75):
        straight.batch(i)
    assert straight.resume_point(75) == (75, straight.rng.bit_generator.state)  # the end
    with pytest.raises(ValueError, match="in order"):
        straight.batch(0)
    with pytest.raises(IndexError, match="75 steps"):
        straight.batch(75)
