"""End to end on the real MNIST, in process: the beautiful_mnist of this project."""

import numpy as np

from barenet.files.modelfile import load_model, save_model
from barenet.train.loop import accuracy, fit, to_inputs
from barenet.train.recipes import get_recipe


def test_the_default_recipe_reaches_98_percent_and_its_model_file_round_trips(mnist, tmp_path):
    """The README's promise: `barenet train` (the seed recipe) reaches 98% in seconds."""
    result = fit(get_recipe("seed"), mnist, progress=False)
    assert result.test_accuracy >= 0.98
    assert result.val_accuracy >= 0.98
    path = save_model(tmp_path / "model.npz", result.model, {"test_accuracy": result.test_accuracy})
    again, meta = load_model(path)
    x = to_inputs(mnist.test_images)
    np.testing.assert_array_equal(result.model.predict_proba(x), again.predict_proba(x))
    assert accuracy(again, mnist.test_images, mnist.test_labels) == meta["test_accuracy"]
