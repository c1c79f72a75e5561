"""Pictures of a trained network (matplotlib, PNG files).

    curves.png      training loss, and training and validation accuracy, per epoch
    confusion.png   the test set's confusion matrix as a heat map (rows: true, columns: predicted)
    mistakes.png    the test digits the network got wrong with the most confidence
    weights.png     what the first layer looks for: each hidden unit's 784 weights as a 28x28
                    image (dense), or each filter (convolutional)
Every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..files.atomic import atomic_write  # noqa: E402
from ..nn.conv import Conv2D  # noqa: E402
from ..nn.layers import Dense  # noqa: E402
from ..nn.model import Sequential  # noqa: E402


def _save(fig: Figure, path: Path) -> Path:
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_curves(histories: Sequence[dict[str, Any]], path: Path) -> Path:
    """histories: one history.json dict per model ({"epochs": [{epoch, train_loss, ...}]})."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, history in enumerate(histories):
        epochs = history["epochs"]
        e = [r["epoch"] for r in epochs]
        tag = f" (member {k + 1})" if len(histories) > 1 else ""
        ax_loss.plot(e, [r["train_loss"] for r in epochs], "o-", label=f"training{tag}")
        ax_acc.plot(e, [100 * r["train_accuracy"] for r in epochs], "o-",
                    label=f"training{tag}")  # fmt: skip
        # null: trained on every image, none held out
        val = [
            (r["epoch"], 100 * r["val_accuracy"]) for r in epochs if r["val_accuracy"] is not None
        ]
        if val:
            ax_acc.plot(*zip(*val), "s--", label=f"validation{tag}")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Training loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_confusion(confusion: np.ndarray, classes: Sequence[str], path: Path) -> Path:
    """confusion: (C, C) counts, rows the true class, columns the predicted one."""
    C = len(classes)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    # Log colour scale: the diagonal holds ~1000 per class, the mistakes a handful.
    shown = np.log10(1 + confusion)
    image = ax.imshow(shown, cmap="Blues")
    for i in range(C):
        for j in range(C):
            n = int(confusion[i, j])
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                        color="white" if shown[i, j] > 0.6 * shown.max() else "black")  # fmt: skip
    ax.set_xticks(range(C), classes, rotation=45 if max(map(len, classes)) > 2 else 0)
    ax.set_yticks(range(C), classes)
    ax.set(xlabel="predicted class", ylabel="true class")
    accuracy = 100 * np.trace(confusion) / confusion.sum()
    ax.set_title(f"Confusion matrix: {accuracy:.2f}% of {int(confusion.sum())} test images")
    fig.colorbar(image, ax=ax, label="log10(1 + count)", shrink=0.8)
    return _save(fig, path)


def plot_mistakes(
    images: np.ndarray,
    labels: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    path: Path,
    count: int = 24,
) -> Path:
    """The `count` wrong predictions made with the highest probability.

    images: (N, 28, 28) uint8; labels: (N,); proba: (N, C) predicted probabilities.
    """
    predicted = proba.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    worst = wrong[np.argsort(-proba[wrong, predicted[wrong]])][:count]
    cols = 8
    rows = max(1, -(-len(worst) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst):
        ax.imshow(images[i], cmap="gray_r")
        ax.set_title(f"true {classes[labels[i]]}\nsaid {classes[predicted[i]]} "
                     f"{100 * proba[i, predicted[i]]:.0f}%", fontsize=7)  # fmt: skip
    fig.suptitle(f"The {len(worst)} most confident mistakes (of {len(wrong)})")
    return _save(fig, path)


def plot_first_layer(model: Sequential, image_shape: tuple[int, int], path: Path) -> Path:
    """The first weighted layer: Dense columns reshaped to images, or Conv2D filters."""
    first = next(layer for layer in model.layers if isinstance(layer, Dense | Conv2D))
    W = np.asarray(first.params["W"])
    if isinstance(first, Dense):
        units = W.T.reshape(-1, *image_shape)  # (H, 28, 28): unit j's weight on each pixel
        title = f"First layer: the weights of {min(64, len(units))} of its {len(units)} units"
    else:
        units = np.moveaxis(W[:, :, 0, :], -1, 0)  # (F, k, k), the first input channel
        title = f"First layer: its {len(units)} {W.shape[0]}x{W.shape[1]} filters"
    units = units[:64]
    cols = 8
    rows = -(-len(units) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.1), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, w in zip(axes.flat, units):
        lim = np.abs(w).max() or 1.0
        ax.imshow(w, cmap="RdBu_r", vmin=-lim, vmax=lim)  # red: positive, blue: negative
    fig.suptitle(title + " (red +, blue -)", fontsize=9)
    return _save(fig, path)
