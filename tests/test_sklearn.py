"""barenet.sklearn.NeuralNetClassifier: scikit-learn's own estimator checks, and use inside
Pipeline and GridSearchCV."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler
from sklearn.utils.estimator_checks import check_estimator

from barenet.sklearn import NeuralNetClassifier

# Checks scikit-learn itself skips here, and why (none is skipped by barenet):
NOT_APPLICABLE = {
    "check_array_api_input": "needs SCIPY_ARRAY_API and an array-API library; barenet is NumPy",
    "check_classifier_data_not_an_array": "runs only with pandas installed",
}


# scikit-learn reports each skip as a warning too; the test lists and checks them instead.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
def test_passes_check_estimator():
    results = check_estimator(NeuralNetClassifier(), on_fail=None)
    failed = [(r["check_name"], r["exception"]) for r in results if r["status"] == "failed"]
    assert not failed
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= set(NOT_APPLICABLE), skipped - set(NOT_APPLICABLE)
    assert sum(r["status"] == "passed" for r in results) >= 50


@pytest.fixture(scope="module")
def digits(mnist):
    X = mnist.train_images[:3000].reshape(3000, -1)
    y = np.array(["zero one two three four five six seven eight nine".split()])[0][
        mnist.train_labels[:3000]
    ]  # string labels: classes_ maps them
    return X, y


def test_pipeline_and_grid_search(digits, mnist):
    X, y = digits
    pipe = make_pipeline(MinMaxScaler(), NeuralNetClassifier(epochs=5, random_state=0))
    grid = GridSearchCV(pipe, {"neuralnetclassifier__hidden": [(32,), (128,)],
                               "neuralnetclassifier__lr": [0.02, 0.1]}, cv=3)  # fmt: skip
    grid.fit(X, y)
    assert grid.best_score_ > 0.85
    assert len(grid.cv_results_["params"]) == 4
    X_test = mnist.test_images[:1000].reshape(1000, -1)
    names = np.array("zero one two three four five six seven eight nine".split())
    assert grid.score(X_test, names[mnist.test_labels[:1000]]) > 0.85
    proba = grid.predict_proba(X_test[:5])
    assert proba.shape == (5, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    assert set(grid.predict(X_test[:50])) <= set(names)


def test_params_round_trip_and_refit_is_deterministic(digits):
    X, y = digits
    clf = NeuralNetClassifier(hidden=(16,), epochs=2, random_state=3)
    assert clf.get_params()["hidden"] == (16,)
    clf.set_params(lr=0.02)
    a = clf.fit(X[:500] / 255, y[:500]).predict_proba(X[500:600] / 255)
    b = clf.fit(X[:500] / 255, y[:500]).predict_proba(X[500:600] / 255)
    np.testing.assert_array_equal(a, b)
