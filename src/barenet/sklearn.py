"""A scikit-learn estimator around barenet's engine: `NeuralNetClassifier`.

Works inside Pipeline, GridSearchCV, cross_val_score, ...: it follows scikit-learn's estimator
contract (parameters stored untouched by __init__, learned attributes ending in "_", inputs
checked by scikit-learn's own validation). scikit-learn is an optional extra:
`pip install barenet[sklearn]`.

    from barenet.sklearn import NeuralNetClassifier
    clf = NeuralNetClassifier(hidden=(256,), epochs=10).fit(X_train, y_train)
    clf.score(X_test, y_test)
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("barenet.sklearn needs scikit-learn: pip install 'barenet[sklearn]'") from e

from .nn.model import Sequential
from .train.loop import train
from .train.recipes import Recipe, build_model


class NeuralNetClassifier(ClassifierMixin, BaseEstimator):
    """A fully connected ReLU network trained by minibatch SGD (barenet's engine).

    Parameters:
        hidden: hidden layer sizes, e.g. (1024,) or (256, 128).
        epochs: passes over the training data.
        batch_size: examples per step (capped at the number of samples).
        lr: peak learning rate of the cosine schedule; momentum: Nesterov momentum.
        l2: L2 penalty on the weights.
        dropout: dropout probability after every hidden layer.
        random_state: seed of the initial weights, shuffling and dropout (int or None: 0).
        verbose: print one line per epoch.

    Learned attributes: classes_ (C,), n_features_in_, model_ (barenet.Sequential),
    history_ (barenet.train.loop.History).
    Inputs: X (n_samples, n_features) numbers, ideally scaled to about [0, 1] or unit variance;
    y (n_samples,) class labels of any type.
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (100,),
        *,
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 0.05,
        momentum: float = 0.9,
        l2: float = 1e-4,
        dropout: float = 0.0,
        random_state: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.hidden = hidden
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.momentum = momentum
        self.l2 = l2
        self.dropout = dropout
        self.random_state = random_state
        self.verbose = verbose

    def fit(self, X: Any, y: Any) -> NeuralNetClassifier:
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, encoded = np.unique(y, return_inverse=True)
        seed = 0 if self.random_state is None else int(self.random_state)
        recipe = Recipe(name="sklearn", description="NeuralNetClassifier", hidden=tuple(self.hidden),
                        epochs=self.epochs, batch_size=max(1, min(self.batch_size, len(X))),
                        lr=self.lr, momentum=self.momentum, nesterov=self.momentum > 0,
                        l2=self.l2, dropout=self.dropout, seed=seed)  # fmt: skip
        recipe.check()
        # A single class still gets two outputs: softmax over one class would learn nothing.
        model = build_model(recipe, (1, X.shape[1]), max(len(self.classes_), 2))
        log = print if self.verbose else None
        self.history_ = train(model, recipe, X, encoded.astype(np.int64), None, None,
                              progress=False, log=log)  # fmt: skip
        self.model_: Sequential = model
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n_samples, n_classes) probabilities, columns in the order of classes_."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        p = self.model_.predict_proba(X)
        return p[:, : len(self.classes_)] / p[:, : len(self.classes_)].sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags
