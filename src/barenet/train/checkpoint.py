"""Training checkpoints: everything needed to continue a run exactly where it stopped.

One .npz archive, written atomically at the end of every epoch and, for long epochs, within
one (a crash mid-write leaves the previous checkpoint whole), read without pickle:
    state.npy          JSON text: {"format": "barenet-checkpoint", "version": 1, "epoch": e,
                       "recipe": {...}, "rngs": {name: generator state}, "history": {...},
                       and within an epoch "inside": {"step": s, ...the epoch's sums}}
    model.<name>.npy   every parameter and buffer of the network (modelfile.model_arrays)
    optim.<name>.npy   the optimiser's state (velocities, or Adam's moments and step count)
    average.<name>.npy with weight averaging: the averaged weights and the update count
    epoch_order.npy    within an epoch: the epoch's shuffled order of the training examples
Continuing from it with the same code, data and thread count gives bit-for-bit the weights of
a run that was never interrupted: the random generators resume mid-stream, so the next step
shuffles, masks and augments exactly as it would have.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..backend.arrays import array_module, to_numpy
from ..errors import ModelFileError
from ..files.atomic import atomic_write
from ..files.modelfile import READ_ERRORS, model_arrays
from ..nn.model import Sequential

FORMAT, VERSION = "barenet-checkpoint", 1


@dataclass
class EpochSoFar:
    """An epoch in progress: its order of the training examples, the steps done and the
    sums its record is made of (a checkpoint taken within an epoch saves it)."""

    order: np.ndarray  # (N,) int64, the epoch's shuffled order
    step: int = 0  # steps done
    loss_sum: float = 0.0
    correct: int = 0
    augment_seconds: float = 0.0
    seconds: float = 0.0  # of the epoch so far
    # the step the checkpoint's augmentation generator stands at: the first of the chunk of
    # batches in hand (`batches.EpochBatches`), made again on resuming; None: `step`
    chunk_start: int | None = None


@dataclass
class Checkpoint:
    epoch: int  # epochs completed
    recipe: dict[str, Any]
    rngs: dict[str, Any]  # generator name -> np.random.Generator.bit_generator.state
    history: dict[str, Any]
    model: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    inside: EpochSoFar | None = None  # set when taken within epoch `epoch + 1`
    average: dict[str, np.ndarray] = field(default_factory=dict)  # averaging.WeightAverage


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    epoch: int,
    recipe: dict[str, Any],
    rngs: dict[str, np.random.Generator],
    history: dict[str, Any],
    model: Sequential,
    optimizer_state: dict[str, Any],
    inside: EpochSoFar | None = None,
    average_state: dict[str, np.ndarray] | None = None,
) -> None:
    state = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": epoch,
        "recipe": recipe,
        "rngs": {name: g.bit_generator.state for name, g in rngs.items()},
        "history": history,
    }
    arrays = {}
    if inside is not None:
        state["inside"] = {"step": inside.step, "loss_sum": inside.loss_sum,
                           "correct": inside.correct, "augment_seconds": inside.augment_seconds,
                           "seconds": inside.seconds, "chunk_start": inside.chunk_start}  # fmt: skip
        arrays["epoch_order"] = np.asarray(inside.order)
    arrays["state"] = np.array(json.dumps(state))
    # to_numpy: a network trained on a GPU is saved as one trained here, and resumes anywhere
    arrays.update({f"model.{k}": to_numpy(v) for k, v in model_arrays(model).items()})
    arrays.update({f"optim.{k}": to_numpy(v) for k, v in optimizer_state.items()})
    arrays.update({f"average.{k}": to_numpy(v) for k, v in (average_state or {}).items()})
    with atomic_write(Path(path)) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint; ModelFileError if it is missing, corrupt or not a checkpoint."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            state = json.loads(str(z["state"]))
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise ModelFileError(f"{path}: not a barenet checkpoint")
            if state.get("version") != VERSION:
                raise ModelFileError(f"{path}: checkpoint version {state.get('version')!r}, "
                                     f"this barenet reads {VERSION}")  # fmt: skip
            model = {k[6:]: z[k] for k in z.files if k.startswith("model.")}
            optim = {k[6:]: z[k] for k in z.files if k.startswith("optim.")}
            average = {k[8:]: z[k] for k in z.files if k.startswith("average.")}
            part = state.get("inside")
            inside = None if part is None else EpochSoFar(order=z["epoch_order"], **part)
        return Checkpoint(
            epoch=int(state["epoch"]),
            recipe=state["recipe"],
            rngs=state["rngs"],
            history=state["history"],
            model=model,
            optimizer=optim,
            inside=inside,
            average=average,
        )
    except ModelFileError:
        raise
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such checkpoint") from None
    except (*READ_ERRORS, TypeError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"{path}: corrupt checkpoint ({type(e).__name__}: {e})") from None


def restore_model(model: Sequential, arrays: dict[str, np.ndarray], path: Path) -> None:
    """Copy a checkpoint's arrays into `model`, whose architecture must match them exactly."""
    target = model_arrays(model)
    if set(target) != set(arrays):
        raise ModelFileError(f"{path}: the checkpoint does not fit the recipe's network")
    for name, dst in target.items():
        if arrays[name].shape != dst.shape:
            raise ModelFileError(f"{path}: {name} has shape {arrays[name].shape}, "
                                 f"the network needs {dst.shape}")  # fmt: skip
        dst[...] = array_module(dst).asarray(arrays[name])
