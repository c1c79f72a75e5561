"""Distillation: a network learns from a trained teacher's probabilities as well as the labels.

For a teacher of members m = 1..K (one network, or an ensemble) and a temperature T, each
training batch's targets are
    t(x) = (1/K) sum_m softmax(z_m(x) / T),
the teacher's class scores z_m computed as it predicts (BatchNorm's running statistics, no
dropout), on the same augmented images the student sees. The student's loss mixes the labels'
cross-entropy with T^2 KL(t || softmax(z / T)) (`barenet.nn.losses.distillation_loss`;
docs/backprop.md section 10). A distorted digit that no longer looks like its label gets a
softer target than the label; the teacher's near-misses (a 4 that is nearly a 9) carry what an
ensemble knows into one network (Hinton, Vinyals and Dean 2015, "Distilling the knowledge in
a neural network").

The teacher must not have trained on the digits the student is measured on: `Teacher.load`
checks that it was trained on the same dataset and held out at least the student's
validation split (the last `val_size` training images).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from ..errors import BarenetError
from ..nn.layers import Array
from ..nn.model import Sequential
from .ensemble import average_proba, dataset_name, load_ensemble


class Teacher:
    """The networks a student learns from, and the temperature of their targets."""

    def __init__(self, models: Sequence[Sequential], temperature: float) -> None:
        if not models:
            raise ValueError("a teacher needs at least one network")
        if not temperature > 0:
            raise ValueError(f"the temperature must be > 0, not {temperature}")
        self.models, self.temperature = list(models), float(temperature)

    def targets(self, x: Array) -> Array:
        """x: (N, D) inputs -> t: (N, C), the members' mean of softmax(z_m / T)."""
        return average_proba(self.models, x, self.temperature)

    def to(self, xp: ModuleType) -> Teacher:
        """This teacher with its networks held by `xp` (cupy: on the GPU its student trains on;
        see `Sequential.to`)."""
        return Teacher([model.to(xp) for model in self.models], self.temperature)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        temperature: float,
        *,
        dataset: str,
        md5: dict[str, str] | None,
        input_size: int,
        num_classes: int,
        val_size: int,
    ) -> Teacher:
        """Load the model file, run directory or ensemble at `path` as the teacher of a student
        trained on `dataset` (its name and, where known, the checksums of its files, as model files record them)
        with `input_size` inputs, `num_classes` classes and the last `val_size` training images
        held out for validation.

        Raises: BarenetError (ModelFileError for a bad file) naming what does not fit.
        """
        models, metas = load_ensemble([path])
        first = models[0]
        if first.input_size != input_size or first.num_classes != num_classes:
            raise BarenetError(
                f"teacher {path}: its networks take {first.input_size} inputs to "
                f"{first.num_classes} classes, the student {input_size} to {num_classes}"
            )
        for meta in metas:
            _check_held_out(path, meta, dataset, md5, val_size)
        return cls(models, temperature)


def _check_held_out(
    path: str | os.PathLike[str], meta: dict[str, Any], dataset: str, md5: dict[str, str] | None,
    val_size: int,
) -> None:  # fmt: skip
    """The teacher's member (its metadata `meta`) trained on `dataset` and held out at least
    the student's `val_size` last training images, or BarenetError."""
    name = dataset_name(meta)
    if name != dataset:
        raise BarenetError(f"teacher {path}: trained on {name or 'an unnamed dataset'}, "
                           f"the student trains on {dataset}")  # fmt: skip
    theirs = (meta.get("dataset") or {}).get("md5")
    if md5 is not None and theirs is not None and theirs != md5:
        raise BarenetError(f"teacher {path}: trained on other {dataset} files than the student's "
                           "(their checksums differ)")  # fmt: skip
    held_out = (meta.get("recipe") or {}).get("val_size")
    if not isinstance(held_out, int):
        raise BarenetError(f"teacher {path}: its files do not say which training images it "
                           "held out, so it may have learnt the student's validation digits")  # fmt: skip
    if held_out < val_size:
        raise BarenetError(
            f"teacher {path}: it held out the last {held_out} training images, and trained on "
            f"the rest; the student is measured on the last {val_size}, so the teacher has "
            "seen some of them (teach with networks that held out at least as many)"
        )
