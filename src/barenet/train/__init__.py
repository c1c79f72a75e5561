"""Training: the loop, recipes, augmentation, adversarial training, checkpoints, ensembles.

Everything here builds on the engine (`barenet.nn`) and the data (`barenet.data`); nothing in
the engine imports it.
"""

from .loop import EpochRecord, History, Result, accuracy, fit, recalibrate_batchnorm, train
from .recipes import RECIPES, Recipe, build_model, get_recipe

__all__ = [
    "RECIPES",
    "EpochRecord",
    "History",
    "Recipe",
    "Result",
    "accuracy",
    "build_model",
    "fit",
    "get_recipe",
    "recalibrate_batchnorm",
    "train",
]
