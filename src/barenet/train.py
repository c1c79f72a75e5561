"""The training loop: seeded, reproducible minibatch training with a validation split.

Same seed, same data, same thread count -> the same weights: the initial weights and every
epoch's shuffle come from generators derived from `recipe.seed` alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from .data.datasets import Dataset
from .errors import TrainingDiverged
from .losses import l2_penalty, softmax_cross_entropy
from .model import Sequential, mlp
from .optim import SGD
from .recipes import Recipe

Log = Callable[[str], None]


def to_inputs(images: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """images: (N, 28, 28) uint8 -> network inputs (N, 784) in [0, 1], `dtype`."""
    return np.multiply(images.reshape(len(images), -1), dtype(1 / 255), dtype=dtype)


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float  # mean cross-entropy over the epoch's batches + L2 penalty at its end
    train_accuracy: float  # on the epoch's batches, as they were seen
    val_accuracy: float
    lr: float  # learning rate at the epoch's last step
    seconds: float  # wall time of the epoch, its validation included


@dataclass
class History:
    epochs: list[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [asdict(e) for e in self.epochs]}


def accuracy(model: Sequential, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `images` (N, 28, 28) uint8 whose predicted class is `labels` (N,)."""
    predicted = np.concatenate(
        [model.predict(to_inputs(images[i : i + 5000])) for i in range(0, len(images), 5000)]
    )
    return float(np.mean(predicted == labels))


def train(
    model: Sequential,
    recipe: Recipe,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    progress: bool = True,
    log: Log | None = None,
) -> History:
    """Train `model` in place with minibatch SGD as `recipe` says.

    Arguments:
        x_train: (N, 28, 28) uint8 images; y_train: (N,) integer labels. Likewise x_val, y_val.
        progress: show a progress bar with the running loss (on stderr).
        log: receives one line per epoch (loss, validation accuracy, seconds).
    Returns:
        the per-epoch history.
    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    recipe.check()
    say = log or (lambda _: None)
    N, B = len(x_train), recipe.batch_size
    steps = math.ceil(N / B)
    shuffle_rng = np.random.default_rng([recipe.seed, 1])
    decayed = model.decayed()
    optimizer = SGD(
        model.parameters(),
        momentum=recipe.momentum,
        nesterov=recipe.nesterov and recipe.momentum > 0,
        weight_decay=recipe.l2,
        decayed=decayed,
    )
    schedule = recipe.lr_schedule()
    history = History()
    for epoch in range(recipe.epochs):
        start = time.perf_counter()
        # One gather per epoch into a contiguous shuffled copy (uint8: a quarter of the float
        # size), so every batch below is a view, converted to float32 in one pass.
        order = shuffle_rng.permutation(N)
        xs = x_train.reshape(N, -1)[order]  # (N, 784) uint8
        ys = y_train[order].astype(np.int64)
        loss_sum, correct, lr = 0.0, 0, schedule(epoch)
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{recipe.epochs}", leave=False,
                   disable=not progress, unit="batch", mininterval=0.5)  # fmt: skip
        # Overflow shows up as a non-finite loss, which stops training below with a message
        # naming the epoch; NumPy's own overflow warnings would only say it less clearly.
        with bar, np.errstate(over="ignore", invalid="ignore"):
            for i in bar:
                xb, yb = to_inputs(xs[i * B : (i + 1) * B]), ys[i * B : (i + 1) * B]
                scores = model.forward(xb, training=True)
                correct += int((scores.argmax(axis=1) == yb).sum())
                loss, dscores = softmax_cross_entropy(scores, yb)
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"training diverged in epoch {epoch + 1}: the loss became {loss}; "
                        f"try a lower learning rate than {recipe.lr:g} (--lr)"
                    )
                loss_sum += loss * len(yb)
                model.backward(dscores)
                lr = schedule(epoch + i / steps)
                optimizer.step(lr)
                if i % 50 == 0:
                    bar.set_postfix(loss=f"{loss_sum / min((i + 1) * B, N):.4f}", refresh=False)
        weights = [p for name, p, _ in model.parameters() if name in decayed]
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=loss_sum / N + l2_penalty(weights, recipe.l2)[0],
            train_accuracy=correct / N,
            val_accuracy=accuracy(model, x_val, y_val),
            lr=lr,
            seconds=time.perf_counter() - start,
        )
        history.epochs.append(record)
        say(f"epoch {record.epoch}/{recipe.epochs}  loss {record.train_loss:.4f}  "
            f"train {100 * record.train_accuracy:.2f}%  val {100 * record.val_accuracy:.2f}%  "
            f"{record.seconds:.2f} s")  # fmt: skip
    return history


@dataclass
class Result:
    model: Sequential
    history: History
    val_accuracy: float
    test_accuracy: float
    train_seconds: float


def fit(
    recipe: Recipe, dataset: Dataset, *, progress: bool = True, log: Log | None = None
) -> Result:
    """Build the recipe's network, train it on the dataset's training split (minus the
    validation split) and measure it on validation and, once at the end, on the test set."""
    recipe.check()
    x_train, y_train, x_val, y_val = dataset.split(recipe.val_size)
    D = int(np.prod(dataset.train_images.shape[1:]))
    C = len(dataset.spec.classes)
    model = mlp(
        [D, *recipe.hidden, C], rng=np.random.default_rng([recipe.seed, 0]), init=recipe.init
    )
    start = time.perf_counter()
    history = train(model, recipe, x_train, y_train, x_val, y_val, progress=progress, log=log)
    seconds = time.perf_counter() - start
    return Result(
        model=model,
        history=history,
        val_accuracy=history.epochs[-1].val_accuracy,
        test_accuracy=accuracy(model, dataset.test_images, dataset.test_labels),
        train_seconds=seconds,
    )
