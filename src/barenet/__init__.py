"""barenet: neural networks in plain NumPy, every gradient written by hand.

from barenet import Sequential, Dense, ReLU
net = Sequential([Dense(784, 256, rng=np.random.default_rng(0)), ReLU(), Dense(256, 10, ...)])
net.fit(x_train, y_train, epochs=5, validation_data=(x_val, y_val))
net.evaluate(x_test, y_test)    # {"loss": ..., "accuracy": ...}
net.predict(inputs)             # classes; net.predict_proba(inputs): probabilities
"""

import os as _os

# OpenBLAS's idle threads spin for 2**28 cycles (about 0.1 s) after each product, on the cores
# that barenet's own threads need next (a convolution's blocks, elementwise work); 2**20 keeps
# them awake between the products of one step only (docs/speed.md, "BLAS threads that spin").
# OpenBLAS reads it once, when NumPy loads it: so only where NumPy is not loaded yet, and
# never over a value already set.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "20")

from .errors import BarenetError, DataError, ImageError, ModelFileError, TrainingDiverged
from .files.modelfile import load_model, save_model
from .nn.conv import Conv2D, MaxPool2D
from .nn.gradcheck import check_layer
from .nn.layers import BatchNorm, Dense, DropConnect, Dropout, Flatten, ReLU, Reshape
from .nn.losses import l2_penalty, softmax_cross_entropy
from .nn.optim import SGD, Adam, AdamW, ConstantLR, CosineLR, OneCycleLR, StepLR
from .train.augment import Augment
from .train.keras import Sequential, mlp
from .train.recipes import RECIPES, Recipe, build_model
from .version import __version__

__all__ = [
    "Adam",
    "AdamW",
    "Augment",
    "BarenetError",
    "BatchNorm",
    "ConstantLR",
    "Conv2D",
    "CosineLR",
    "DataError",
    "Dense",
    "DropConnect",
    "Dropout",
    "Flatten",
    "ImageError",
    "MaxPool2D",
    "ModelFileError",
    "OneCycleLR",
    "RECIPES",
    "ReLU",
    "Recipe",
    "Reshape",
    "SGD",
    "Sequential",
    "StepLR",
    "TrainingDiverged",
    "__version__",
    "build_model",
    "check_layer",
    "l2_penalty",
    "load_model",
    "mlp",
    "save_model",
    "softmax_cross_entropy",
]
