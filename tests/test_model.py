import numpy as np
import pytest

from barenet import Sequential, mlp
from barenet.nn.layers import Dense, ReLU


def test_mlp_structure_and_counts():
    net = mlp([784, 1024, 10], rng=np.random.default_rng(0))
    assert [type(layer) for layer in net.layers] == [Dense, ReLU, Dense]
    assert net.num_params() == 784 * 1024 + 1024 + 1024 * 10 + 10
    assert net.num_classes == 10
    assert net.decayed() == {"layers.0.W", "layers.2.W"}


def test_predict_proba_rows_sum_to_one_and_agree_with_predict():
    rng = np.random.default_rng(0)
    net = mlp([20, 16, 5], rng=rng)
    x = rng.standard_normal((4321, 20)).astype(np.float32)
    p = net.predict_proba(x, batch_size=1000)
    assert p.shape == (4321, 5)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_array_equal(p.argmax(axis=1), net.predict(x, batch_size=777))


def test_config_round_trip():
    net = mlp([6, 5, 3], rng=np.random.default_rng(0))
    again = Sequential.from_config(net.config())
    assert again.config() == net.config()
    with pytest.raises(ValueError):
        Sequential.from_config([])
    with pytest.raises(ValueError):
        Sequential.from_config(["Dense"])  # type: ignore[list-item]


def test_backward_fills_every_grad():
    rng = np.random.default_rng(0)
    net = mlp([6, 5, 3], rng=rng)
    net.forward(rng.standard_normal((2, 6)).astype(np.float32), training=True)
    net.backward(np.ones((2, 3), np.float32))
    for _, p, g in net.parameters():
        assert g.shape == p.shape and np.any(g != 0)


def test_keras_style_fit_evaluate_predict(mnist):
    rng = np.random.default_rng(0)
    net = Sequential([Dense(784, 64, rng=rng), ReLU(), Dense(64, 10, rng=rng)])
    x, y = mnist.train_images[:6000], mnist.train_labels[:6000]
    history = net.fit(x[:5000], y[:5000], epochs=5, validation_data=(x[5000:], y[5000:]),
                      verbose=False)  # fmt: skip
    assert len(history.epochs) == 5 and history.epochs[-1].val_accuracy > 0.85
    result = net.evaluate(mnist.test_images[:2000], mnist.test_labels[:2000])
    assert result["accuracy"] > 0.85 and 0 < result["loss"] < 0.6
    # float features work as well as uint8 images
    floats = mnist.test_images[:2000].reshape(2000, -1) / 255.0
    assert net.evaluate(floats, mnist.test_labels[:2000]) == pytest.approx(result)
    with pytest.raises(ValueError, match="labels must be"):
        net.fit(x[:10], np.full(10, 12), epochs=1, verbose=False)
