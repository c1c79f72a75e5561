"""barenet: neural networks in plain NumPy, every gradient written by hand."""

from .errors import BarenetError, DataError, ImageError, ModelFileError, TrainingDiverged
from .layers import Dense, Dropout, Flatten, ReLU
from .losses import l2_penalty, softmax_cross_entropy
from .model import Sequential, mlp
from .optim import SGD, Adam, AdamW, ConstantLR, CosineLR, StepLR

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AdamW",
    "BarenetError",
    "ConstantLR",
    "CosineLR",
    "DataError",
    "Dense",
    "Dropout",
    "Flatten",
    "ImageError",
    "ModelFileError",
    "ReLU",
    "SGD",
    "Sequential",
    "StepLR",
    "TrainingDiverged",
    "__version__",
    "l2_penalty",
    "mlp",
    "softmax_cross_entropy",
]
