"""The training loop: seeded, reproducible minibatch training with a validation split.

Same seed, same data, same thread count -> the same weights: the initial weights, every epoch's
shuffle, every dropout mask and every augmentation come from generators derived from the seed
alone, and a checkpoint saves their states, so a resumed run continues bit for bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from tqdm import tqdm

from ..backend.arrays import to_numpy
from ..data.datasets import FILES, Dataset
from ..errors import ModelFileError, TrainingDiverged
from ..nn.layers import BatchNorm, Dense, DropConnect, Dropout
from ..nn.losses import (
    distillation_loss,
    l1_gradient,
    l1_penalty,
    l2_penalty,
    softmax_cross_entropy,
)
from ..nn.model import Sequential, to_inputs
from ..nn.optim import SGD, Adam, max_norm_
from .adversarial import virtual_adversarial_step
from .averaging import WeightAverage
from .batches import EpochBatches
from .checkpoint import EpochSoFar, load_checkpoint, restore_model, save_checkpoint
from .distill import Teacher
from .monitor import Monitor, json_number
from .recipes import Recipe, build_model

Log = Callable[[str], None]


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float  # mean cross-entropy over the epoch's batches + L2 (and L1) penalty at
    # its end
    train_accuracy: float  # on the epoch's batches, as they were seen
    val_accuracy: float  # of the model the run yields (the averaged weights, with weight
    # averaging); NaN without a validation split (null in JSON)
    lr: float  # learning rate at the epoch's last step
    seconds: float  # wall time of the epoch, its validation included
    augment_seconds: float = 0.0  # of which augmenting the batches
    raw_val_accuracy: float = math.nan  # with weight averaging: the weights as trained

    def to_dict(self) -> dict[str, Any]:
        """As JSON holds it: a missing validation figure is null (NaN is not JSON)."""
        return {**asdict(self), "val_accuracy": json_number(self.val_accuracy),
                "raw_val_accuracy": json_number(self.raw_val_accuracy)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EpochRecord:
        d = {k: math.nan if v is None and k.endswith("val_accuracy") else v for k, v in d.items()}
        return cls(**d)


@dataclass
class History:
    epochs: list[EpochRecord] = field(default_factory=list)
    # where a stop request ended the run early: {"epoch": e, "step": s} (1-based; s steps of
    # epoch e were done), else None
    stopped_at: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": [e.to_dict() for e in self.epochs]}


def accuracy(model: Sequential, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `images` (N, 28, 28) uint8 whose predicted class is `labels` (N,)."""
    xp = model.xp  # numpy, or cupy: each chunk goes to the GPU and its answers come back
    predicted = np.concatenate([
        to_numpy(model.predict(xp.asarray(to_inputs(images[i : i + 5000]))))
        for i in range(0, len(images), 5000)
    ])  # fmt: skip
    return float(np.mean(predicted == labels))


# The clean images BatchNorm's running statistics are recalibrated on (`recalibrate_batchnorm`).
# 2,000 predict as 10,000 did: recalibrated both ways, pilot 3, a `cnn-deep` member and `cnn`
# gave the same validation accuracy and the same 5,000 answers (docs/speed.md), and a wide
# net's epoch spends a fifth of the time on it (pilot 4 on one thread: about 78 -> 16 s).
RECALIBRATION_IMAGES = 2_000

# A checkpoint within an epoch once this long has passed since the last one: an epoch of a
# wide network can outlast it, and a run killed mid-epoch then loses at most this much.
CHECKPOINT_SECONDS = 600.0


def recalibrate_batchnorm(model: Sequential, x: np.ndarray, batch_size: int) -> None:
    """Set every BatchNorm's running statistics to the mean of its batch statistics over
    clean (unaugmented) inputs x, in batches of batch_size.

    Training on augmented images leaves running statistics of augmented images, whose
    distribution differs from the clean images seen at test time (zoomed and distorted digits
    have different stroke statistics); on the `cnn` recipe that mismatch cost 0.2 points of
    test accuracy. The weights are untouched, and with momentum 1/k at the k-th batch the
    running statistics become the plain average over all batches.
    """
    norms = [layer for layer in model.layers if isinstance(layer, BatchNorm)]
    if not norms:
        return
    saved = [bn.momentum for bn in norms]
    masked = [
        (layer, layer.p) for layer in model.layers if isinstance(layer, Dropout | DropConnect)
    ]
    for layer, _ in masked:
        layer.p = 0.0  # masks would change the statistics of the layers after them
    try:
        for k, i in enumerate(range(0, len(x), batch_size), start=1):
            for bn in norms:
                bn.momentum = 1.0 / k
            model.forward(model.xp.asarray(to_inputs(x[i : i + batch_size])), training=True)
    finally:
        for bn, m in zip(norms, saved):
            bn.momentum = m
        for layer, p in masked:
            layer.p = p


def make_optimizer(recipe: Recipe, model: Sequential) -> SGD | Adam:
    """The recipe's optimiser over every parameter of `model` (L2 on its decayed ones)."""
    params, decayed = model.parameters(), model.decayed()
    if recipe.optimizer == "sgd":
        return SGD(params, momentum=recipe.momentum, nesterov=recipe.nesterov and
                   recipe.momentum > 0, weight_decay=recipe.l2, decayed=decayed)  # fmt: skip
    return Adam(params, weight_decay=recipe.l2, decayed=decayed,
                decoupled=recipe.optimizer == "adamw")  # fmt: skip


def random_layers(model: Sequential) -> dict[str, np.random.Generator]:
    """The generators of the model's random layers (Dropout, DropConnect), by layer name."""
    return {
        f"layers.{i}": layer.rng
        for i, layer in enumerate(model.layers)
        if isinstance(layer, Dropout | DropConnect)
    }


def train(
    model: Sequential,
    recipe: Recipe,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray | None,
    y_val: np.ndarray | None,
    *,
    seed: int | None = None,
    progress: bool = True,
    log: Log | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    monitor: Monitor | None = None,
    teacher: Teacher | None = None,
) -> History:
    """Train `model` in place as `recipe` says.

    Arguments:
        x_train: (N, H, W) uint8 images, or (N, D) float features already scaled;
            y_train: (N,) integer labels in [0, C). Likewise x_val, y_val (None: no validation,
            and the history's val_accuracy is NaN). Augmentation needs images.
        seed: seeds the shuffling and augmentation (default: recipe.seed); the model's random
            layers carry their own generators (recipes.build_model seeds them).
        progress: show a progress bar with the running loss (on stderr).
        log: receives one line per epoch (loss, validation accuracy, seconds).
        checkpoint: a file to write, atomically, at the end of every epoch, and within an
            epoch once checkpoint_seconds have passed since the last one (after a step).
        resume: continue from `checkpoint` if it exists (model, optimiser, generators, epoch,
            and, for a checkpoint taken within an epoch, the step and the epoch's order).
        monitor: told every step and epoch (the live page); its pause holds the loop between
            steps, and its stop ends the run cleanly after the current step: the checkpoint
            is written (a later resume continues from that step) and the history says where
            it stopped (`stopped_at`).
        teacher: the networks a recipe with a `teacher` distils from (`fit` loads them with
            `Teacher.load`, which checks that they held out the validation split).
    Returns:
        the per-epoch history (of the whole run, when resumed).
    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    recipe.check()
    if bool(recipe.teacher) != (teacher is not None):
        raise ValueError("a recipe with a teacher needs its networks (teacher=Teacher.load(...)), "
                         "and only such a recipe takes them")  # fmt: skip
    say = log or (lambda _: None)
    seed = recipe.seed if seed is None else seed
    xp = model.xp  # numpy, or cupy for a network on a GPU: each batch goes where it is
    if teacher is not None and any(m.xp is not xp for m in teacher.models):
        raise ValueError("the teacher's networks must be where the student is (Sequential.to)")
    N, B = len(x_train), recipe.batch_size
    steps = math.ceil(N / B)
    rngs = {
        "shuffle": np.random.default_rng([seed, 1]),
        "augment": np.random.default_rng([seed, 3]),
        **({"perturb": np.random.default_rng([seed, 4])} if recipe.vat_eps else {}),
        **random_layers(model),
    }
    optimizer = make_optimizer(recipe, model)
    average = WeightAverage(model, recipe.weight_average) if recipe.weight_average else None
    schedule = recipe.lr_schedule()
    history, first, inside = History(), 0, None
    if resume and checkpoint is not None and checkpoint.exists():
        state = load_checkpoint(checkpoint)
        restore_model(model, state.model, checkpoint)
        try:
            optimizer.load_state(state.optimizer)
            if average is not None:
                average.load_state(state.average)
            for name, g in rngs.items():
                g.bit_generator.state = state.rngs[name]
        except (KeyError, ValueError, TypeError) as e:
            raise ModelFileError(f"{checkpoint}: the checkpoint does not fit the recipe "
                                 f"({type(e).__name__}: {e})") from None  # fmt: skip
        history = History([EpochRecord.from_dict(e) for e in state.history["epochs"]])
        first, inside = state.epoch, state.inside
        where = f", step {inside.step}/{steps} of epoch {first + 1}" if inside else ""
        say(f"resuming from {checkpoint} after epoch {first}/{recipe.epochs}{where}")
    decayed = model.decayed()
    weights = [p for name, p, _ in model.parameters() if name in decayed]  # L2 and max-norm
    # the output layer: the recipe's L1 penalty (head_l1) is on its weights
    head = next((layer for layer in reversed(model.layers) if isinstance(layer, Dense)), None)
    if recipe.head_l1 and head is None:
        raise ValueError("head_l1 needs a Dense output layer, and this model has none")
    aug = recipe.augment if recipe.augment.active else None
    image_shape = x_train.shape[1:]
    if aug is not None and (x_train.dtype != np.uint8 or x_train.ndim != 3):
        raise ValueError("augmentation needs (N, H, W) uint8 images")
    flat = x_train.reshape(N, -1)  # each step gathers its rows (batches.py)
    side = image_shape[0] if len(image_shape) == 2 else math.isqrt(flat.shape[1])
    saved = time.monotonic()  # when the last checkpoint was written
    if monitor is not None:
        monitor.begin(epochs=recipe.epochs, steps=steps, batch_size=B, recipe=recipe.name,
                      num_classes=model.num_classes, first_epoch=first, done=history.epochs)  # fmt: skip

    def save(epoch: int, batches: EpochBatches | None = None, part: EpochSoFar | None = None,
             ) -> None:  # fmt: skip
        """A checkpoint after `epoch` epochs, and within the next one `part` of it, whose
        `batches` say where the augmentation's generator stood when their chunk began."""
        nonlocal saved
        assert checkpoint is not None
        generators = rngs
        if batches is not None and part is not None:  # resumed from where its chunk began
            chunk_start, state = batches.resume_point(part.step)
            part = replace(part, chunk_start=chunk_start)
            generators = {**rngs, "augment": np.random.default_rng()}
            generators["augment"].bit_generator.state = state
        save_checkpoint(checkpoint, epoch=epoch, recipe=recipe.to_dict(), rngs=generators,
                        history=history.to_dict(), model=model,
                        optimizer_state=optimizer.state(), inside=part,
                        average_state=average.state() if average else None)  # fmt: skip
        saved = time.monotonic()

    for epoch in range(first, recipe.epochs):
        start = time.perf_counter()
        # the recipe's last clean_epochs see the images as they are
        epoch_aug = None if epoch >= recipe.epochs - recipe.clean_epochs else aug
        if inside is None:  # a new epoch: a new order
            part = EpochSoFar(order=rngs["shuffle"].permutation(N))
        else:  # the epoch a checkpoint was taken in, from its next step
            part, inside = inside, None
        order = part.order
        batches = EpochBatches(flat, y_train[order].astype(np.int64), order, B, image_shape,
                               epoch_aug, rngs["augment"], teacher, xp,
                               start=part.step if part.chunk_start is None else part.chunk_start)  # fmt: skip
        loss_sum, correct, lr = part.loss_sum, part.correct, 0.0
        bar = tqdm(range(part.step, steps), desc=f"epoch {epoch + 1}/{recipe.epochs}",
                   initial=part.step, total=steps, leave=False, disable=not progress,
                   unit="batch", mininterval=0.5)  # fmt: skip
        # Overflow shows up as a non-finite loss, which stops training below with a message
        # naming the epoch; NumPy's own overflow warnings would only say it less clearly.
        with bar, np.errstate(over="ignore", invalid="ignore"):
            for i in bar:
                if monitor is not None:
                    paused = monitor.paused_seconds
                    if monitor.wait():
                        history.stopped_at = {"epoch": epoch + 1, "step": i}
                        break
                    start += monitor.paused_seconds - paused  # a pause is not training time
                xb, yb, targets = batches.batch(i)  # on the CPU, or the GPU of a network there
                scores = model.forward(xb, training=True)
                correct += int((scores.argmax(axis=1) == yb).sum())
                if targets is None:
                    loss, dscores = softmax_cross_entropy(scores, yb, recipe.label_smoothing)
                else:  # the teacher's (B, C), at the recipe's temperature
                    loss, dscores = distillation_loss(scores, yb, targets, recipe.distill_weight,
                                                      recipe.distill_temperature)  # fmt: skip
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"training diverged in epoch {epoch + 1}: the loss became {loss}; "
                        f"try a lower learning rate than {recipe.lr:g} (--lr)"
                    )
                loss_sum += loss * len(yb)
                model.backward(dscores)
                if recipe.vat_eps:
                    virtual_adversarial_step(model, xb, scores, recipe.vat_eps,
                                             recipe.vat_weight, rngs["perturb"])  # fmt: skip
                if recipe.head_l1 and head is not None:  # dW += lam sign(W) on the output layer
                    head.grads["W"] += l1_gradient(head.params["W"], recipe.head_l1)
                lr = schedule(epoch + i / steps)
                optimizer.step(lr)
                if recipe.max_norm:
                    for W in weights:
                        max_norm_(W, recipe.max_norm)
                if average is not None:
                    average.update()
                if monitor is not None:
                    seen = min((i + 1) * B, N)
                    monitor.step(epoch + 1, i + 1, steps, len(yb), loss_sum / seen,
                                 correct / seen, lr, model, side)  # fmt: skip
                if i % 50 == 0:
                    bar.set_postfix(loss=f"{loss_sum / min((i + 1) * B, N):.4f}", refresh=False)
                if (
                    checkpoint is not None and i + 1 < steps
                    and time.monotonic() - saved >= checkpoint_seconds
                ):  # fmt: skip
                    save(epoch, batches, EpochSoFar(
                        order, i + 1, loss_sum, correct,
                        part.augment_seconds + batches.augment_seconds,
                        part.seconds + time.perf_counter() - start))  # fmt: skip
        if history.stopped_at is not None:
            i = history.stopped_at["step"]
            if checkpoint is not None and i > 0:
                save(epoch, batches, EpochSoFar(
                    order, i, loss_sum, correct, part.augment_seconds + batches.augment_seconds,
                    part.seconds + time.perf_counter() - start))  # fmt: skip
            if average is not None:  # the model the run yields: the average so far
                average.swap(model)
            if epoch_aug is not None or average is not None:  # ready to use
                recalibrate_batchnorm(model, x_train[:RECALIBRATION_IMAGES], B)
            say(f"stopped in epoch {epoch + 1}/{recipe.epochs} after step {i}/{steps}")
            break
        augment_seconds = part.augment_seconds + batches.augment_seconds
        penalty = l2_penalty(weights, recipe.l2)[0]  # of the weights as trained
        if recipe.head_l1 and head is not None:
            penalty += l1_penalty([head.params["W"]], recipe.head_l1)[0]
        if epoch_aug is not None:
            recalibrate_batchnorm(model, x_train[:RECALIBRATION_IMAGES], B)
        raw_val_accuracy, trained = math.nan, None
        if average is not None:  # measure the weights as trained, then yield their average
            if x_val is not None and y_val is not None:
                raw_val_accuracy = accuracy(model, x_val, y_val)
            trained = average.swap(model)
            recalibrate_batchnorm(model, x_train[:RECALIBRATION_IMAGES], B)
        seconds = part.seconds + time.perf_counter() - start
        proba = None
        if x_val is None or y_val is None:
            val_accuracy = math.nan
        elif monitor is None:
            val_accuracy = accuracy(model, x_val, y_val)
        else:  # the probabilities also give the page its confusion matrix and mistakes
            proba = to_numpy(model.predict_proba(xp.asarray(to_inputs(x_val))))
            val_accuracy = float(np.mean(proba.argmax(axis=1) == y_val))
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=loss_sum / N + penalty,
            train_accuracy=correct / N,
            val_accuracy=val_accuracy,
            lr=lr,
            seconds=part.seconds + time.perf_counter() - start,
            augment_seconds=augment_seconds,
            raw_val_accuracy=raw_val_accuracy,
        )
        history.epochs.append(record)
        extra = f"  (augmentation {100 * augment_seconds / seconds:.0f}%)" if epoch_aug else ""
        val = "" if x_val is None else f"  val {100 * record.val_accuracy:.2f}%"
        if average is not None and x_val is not None:
            val += f" (as trained {100 * raw_val_accuracy:.2f}%)"
        say(f"epoch {record.epoch}/{recipe.epochs}  loss {record.train_loss:.4f}  "
            f"train {100 * record.train_accuracy:.2f}%{val}  {record.seconds:.2f} s{extra}")  # fmt: skip
        if monitor is not None:
            monitor.epoch(record, proba, y_val, x_val)
        if average is not None and trained is not None and epoch + 1 < recipe.epochs:
            average.restore(model, trained)  # train on from the weights as trained
        if checkpoint is not None:
            save(epoch + 1)
    if monitor is not None:
        monitor.finish(stopped=history.stopped_at is not None)
    return history


@dataclass
class Result:
    model: Sequential
    history: History
    val_accuracy: float
    test_accuracy: float
    train_seconds: float  # of this process: a resumed run counts its own part only


def fit(
    recipe: Recipe,
    dataset: Dataset,
    *,
    seed: int | None = None,
    progress: bool = True,
    log: Log | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
    monitor: Monitor | None = None,
    xp: ModuleType | None = None,
) -> Result:
    """Build the recipe's network, train it on the dataset's training split (minus the
    validation split) and measure it on validation and, once at the end, on the test set (a
    run stopped early is measured on validation only: test_accuracy is NaN). `seed` overrides
    recipe.seed (ensemble members); `xp` (cupy) trains on a GPU: the network and its teacher
    go there, each batch follows them, and the result comes back as a NumPy network; see
    `train` for the others."""
    recipe.check()
    x_train, y_train, x_val, y_val = dataset.split(recipe.val_size)
    H, W = dataset.train_images.shape[1:]
    model = build_model(recipe, (H, W), len(dataset.spec.classes), seed=seed)
    teacher = None
    if recipe.teacher:
        md5 = dict(zip(FILES, dataset.spec.md5)) if all(dataset.spec.md5) else None
        teacher = Teacher.load(recipe.teacher, recipe.distill_temperature,
                               dataset=dataset.spec.name, md5=md5, input_size=model.input_size,
                               num_classes=model.num_classes, val_size=recipe.val_size)  # fmt: skip
    if xp is not None:
        model = model.to(xp)
        if teacher is not None:
            teacher = teacher.to(xp)
    start, paused = time.perf_counter(), monitor.paused_seconds if monitor else 0.0
    history = train(model, recipe, x_train, y_train, x_val, y_val, seed=seed, progress=progress,
                    log=log, checkpoint=checkpoint, resume=resume,
                    checkpoint_seconds=checkpoint_seconds, monitor=monitor,
                    teacher=teacher)  # fmt: skip
    seconds = time.perf_counter() - start - (monitor.paused_seconds - paused if monitor else 0.0)
    test_accuracy = math.nan  # stopped early, or data of one's own without a held-out part
    if history.stopped_at is None:
        val_accuracy = history.epochs[-1].val_accuracy
        if len(dataset.test_labels):
            test_accuracy = accuracy(model, dataset.test_images, dataset.test_labels)
    else:  # stopped early: the model as it stands, on validation only
        val_accuracy = math.nan
        if x_val is not None and y_val is not None:
            val_accuracy = accuracy(model, x_val, y_val)
    return Result(model=model.to(np), history=history, val_accuracy=val_accuracy,
                  test_accuracy=test_accuracy, train_seconds=seconds)  # fmt: skip
