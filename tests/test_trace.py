"""`barenet trace`: every layer's statistics, and a wrong backward pass found by name."""

import numpy as np
import pytest
from test_cli import assert_one_line_error, run

from barenet.files.modelfile import load_model
from barenet.nn.layers import BatchNorm
from barenet.nn.trace import SUSPECT, trace
from barenet.train.recipes import RECIPES, build_model


def _digits(n=4):
    rng = np.random.default_rng(0)
    x = np.zeros((n, 28, 28))
    x[:, 6:22, 12:16] = rng.uniform(0.5, 1, (n, 16, 4))  # a stroke of a "1"
    return x.reshape(n, -1), np.arange(n) % 10


def test_the_shipped_cnn_traces_clean():
    model, _ = load_model("models/cnn")
    x, y = _digits()
    rows = trace(model, x, y)
    assert [r.name for r in rows][:3] == ["Reshape", "Conv2D 1->32 3x3", "BatchNorm"]
    assert rows[1].shape == (4, 28, 28, 32) and rows[-1].shape == (4, 10)
    assert all(r.error < SUSPECT for r in rows), [(r.name, r.error) for r in rows]
    relu = next(r for r in rows if r.name == "ReLU")
    assert 0 < relu.zeros < 1 and relu.mean > 0  # some units off, the rest positive
    bn = rows[2]
    assert abs(bn.mean) < 0.2 and 0.8 < bn.std < 1.2  # BatchNorm's output is normalised
    assert set(rows[1].param_grad_norms) == {"W", "b"} and rows[1].grad_norm > 0


class BrokenBatchNorm(BatchNorm):
    """A planted bug: the backward pass forgets the mean's share (dbeta / M)."""

    def backward(self, dout, need_dx=True, need_grads=True):
        dx = super().backward(dout, need_dx, need_grads)
        return dx + self.params["gamma"] * self._inv_std * self.grads["beta"] / (
            dout.size // dout.shape[-1]
        )


def test_a_wrong_backward_pass_shows_at_its_layer_and_below_only():
    model = build_model(RECIPES["cnn"], (28, 28), 10, seed=0)
    i = next(k for k, layer in enumerate(model.layers) if isinstance(layer, BatchNorm) and k > 3)
    broken = BrokenBatchNorm(model.layers[i].num_features)
    model.layers[i] = broken
    x, y = _digits(6)
    rows = trace(model, x, y)
    assert rows[i].error > SUSPECT, rows[i]
    assert all(r.error < SUSPECT for r in rows[i + 1 :]), [(r.name, r.error) for r in rows]


def test_trace_command():
    p = run("trace", "models/seed", "--batch", "3")
    assert p.returncode == 0, p.stderr
    assert "Dense 784->1024" in p.stdout and "worst gradient error" in p.stdout
    p = run("trace", "--recipe", "cnn", "--batch", "2", "--entries", "1")
    assert p.returncode == 0, p.stderr
    assert "untrained" in p.stdout and "Conv2D 32->64 3x3" in p.stdout
    assert_one_line_error(run("trace", "models/seed", "--recipe", "cnn"), "not both")
    assert_one_line_error(run("trace", "models/cnn-ensemble"), "one model at a time")
    assert_one_line_error(run("trace", "no-such-model.npz"), "")


@pytest.mark.parametrize("flag", ["--batch", "--entries"])
def test_trace_rejects_bad_numbers(flag):
    p = run("trace", flag, "0")
    assert p.returncode == 2 and "must be at least 1" in p.stderr
