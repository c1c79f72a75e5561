"""`barenet export MODEL --web DIR`: the static page, its JavaScript forward pass against
barenet's own on real test digits (every shipped model, and one of every layer), its
JavaScript preparation of a drawing against `prepare_digit`, served by a plain static file
server and opened from the disk."""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import draw
from PIL import Image

from barenet.apps.webdemo import FILES, export_web
from barenet.data.images import prepare_digit
from barenet.errors import BarenetError
from barenet.nn.conv import Conv2D, MaxPool2D
from barenet.nn.layers import BatchNorm, DropConnect, Dropout, Flatten, ReLU, Reshape
from barenet.nn.model import Sequential, to_inputs
from barenet.nn.pooling import AvgPool2D, GlobalPool, SqueezeExcite
from barenet.train.ensemble import load_ensemble

ROOT = Path(__file__).parents[1]
CLASSES = [str(c) for c in range(10)]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                    "(apt-get install chromium; .ci/run does it as root)")  # fmt: skip


def every_layer() -> Sequential:
    """A small network with every layer barenet.js computes, its BatchNorm statistics and
    weights random (not just initial) so that each layer's maths shows."""
    rng = np.random.default_rng(0)
    net = Sequential([
        Reshape((28, 28, 1)), Conv2D(1, 6, 3, padding=1, rng=rng), BatchNorm(6), ReLU(),
        MaxPool2D(2, 2), Conv2D(6, 8, 3, stride=2, padding=0, rng=rng), SqueezeExcite(8, 2, rng=rng),
        ReLU(), AvgPool2D(2), Conv2D(8, 8, 1, rng=rng), GlobalPool("avg+max"),
        DropConnect(16, 12, 0.3, rng=rng), BatchNorm(12), ReLU(), Dropout(0.5, rng=rng),
        Flatten(), DropConnect(12, 10, 0.2, rng=rng),
    ])  # fmt: skip
    for layer in net.layers:
        for a in getattr(layer, "params", {}).values():
            a[...] = rng.normal(0, 0.5, a.shape)
        for name, a in getattr(layer, "buffers", {}).items():
            a[...] = (
                rng.uniform(0.5, 1.5, a.shape) if "var" in name else rng.normal(0, 0.3, a.shape)
            )
    return net


def test_export_writes_the_four_files_and_replaces_only_its_own(tmp_path):
    net = every_layer()
    site = export_web([net], CLASSES, tmp_path / "site", about="a test.", version="0")
    assert sorted(p.name for p in site.iterdir()) == sorted(FILES)
    text = (site / "model.js").read_text()
    model = json.loads(text[text.index("{") : text.rindex("}") + 1])
    assert model["classes"] == CLASSES and len(model["members"]) == 1
    n = sum(v[1] for layer in model["members"][0] for v in layer["params"].values())
    assert len(base64.b64decode(model["weights"])) == 4 * n
    export_web([net], CLASSES, site, about="again.", version="0")  # an earlier export: replaced
    assert "again." in (site / "model.js").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(BarenetError, match="other files in it"):
        export_web([net], CLASSES, tmp_path / "mine", about="", version="0")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_export_command_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "barenet", "export", *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    p = run("models/cnn", "x.onnx", "--web", str(tmp_path / "s"))
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "give one or the other" in p.stderr
    p = run()
    assert p.returncode == 1 and "--web DIR" in p.stderr and "Traceback" not in p.stderr


class Site:
    """DIR served by Python's plain static file server on loopback."""

    def __init__(self, directory: Path) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
        handler.log_message = lambda *a: None  # type: ignore[method-assign]
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def page_predictions(browser, site_dir: Path, images: np.ndarray) -> np.ndarray:
    site = Site(site_dir)
    try:
        page = browser.new_page()
        page.goto(site.url)
        got = page.evaluate("imgs => imgs.map(p => demo.predict(p))",
                            images.reshape(len(images), -1).tolist())  # fmt: skip
        page.close()
    finally:
        site.close()
    return np.array(got)


@needs_chromium
@pytest.mark.parametrize("name", ["seed", "cnn", "cnn-ensemble", "every-layer"])
def test_the_page_answers_as_barenet_on_100_test_digits(tmp_path, mnist, browser, name):
    if name == "every-layer":
        models = [every_layer()]
    else:
        models, _ = load_ensemble([ROOT / "models" / name])
    export_web(models, CLASSES, tmp_path / "site", about="", version="0")
    x = mnist.test_images[:100]
    expected = np.mean([m.predict_proba(to_inputs(x)) for m in models], axis=0)
    got = page_predictions(browser, tmp_path / "site", x)
    assert got.shape == (100, 10)
    np.testing.assert_array_equal(got.argmax(axis=1), expected.argmax(axis=1))
    assert np.abs(got - expected).max() <= 1e-5


@needs_chromium
def test_drawn_digits_are_prepared_as_barenet_predict_prepares_them(tmp_path, browser):
    """Draw on the pad with the mouse; the 28x28 image the page computed in JavaScript matches
    prepare_digit's of the same canvas (to a grey level here and there), and so do the answers."""
    models, _ = load_ensemble([ROOT / "models" / "cnn"])
    export_web(models, CLASSES, tmp_path / "site", about="", version="0")
    digits = {
        "1": [[(140, 40), (150, 240)]],
        "7": [[(70, 50), (210, 50)], [(210, 50), (110, 240)]],
        "2": [[(80, 90), (140, 50), (200, 90), (90, 230), (210, 230)]],
        "0": [[(140 + 60 * np.sin(t), 140 - 90 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 40)]],
    }  # fmt: skip
    site = Site(tmp_path / "site")
    try:
        page = browser.new_page()
        page.goto(site.url)
        for label, strokes in digits.items():
            page.click("#clear")
            draw(page, strokes)
            seen = np.array(page.evaluate("window.lastSeen"), dtype=float).reshape(28, 28)
            png = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
            canvas = Image.open(io.BytesIO(base64.b64decode(png.split(",", 1)[1])))
            expected = prepare_digit(canvas).astype(float)
            assert np.abs(seen - expected).mean() < 0.5 and np.abs(seen - expected).max() <= 3
            said = page.inner_text("#prediction").rstrip("?")
            assert said == label
            assert str(models[0].predict(to_inputs(expected.astype(np.uint8)[None]))[0]) == label
            values = [float(page.inner_text(f"#value-{c}").rstrip("%")) for c in range(10)]
            assert abs(sum(values) - 100) < 1.0
        page.close()
    finally:
        site.close()


@needs_chromium
def test_the_page_works_opened_from_the_disk(tmp_path, browser, mnist):
    models, _ = load_ensemble([ROOT / "models" / "seed"])
    site = export_web(models, CLASSES, tmp_path / "site", about="", version="0")
    page = browser.new_page()
    page.goto((site / "index.html").as_uri())
    p = page.evaluate("px => demo.show(px)", mnist.test_images[0].reshape(-1).tolist())
    assert int(np.argmax(p)) == mnist.test_labels[0]
    assert page.inner_text("#prediction").rstrip("?") == str(mnist.test_labels[0])
    page.close()


@needs_chromium
def test_a_model_of_images_kept_as_they_were_gets_drawings_prepared_so(tmp_path, browser):
    """A model trained with `--prepare resize` on dark-on-light images: the page resizes and
    inverts a drawing as load_resized does, not as a photo of a digit."""
    from barenet.data.own import load_resized
    from barenet.nn.model import mlp

    net = mlp([784, 16, 3], rng=np.random.default_rng(0))
    site = export_web([net], ["a", "b", "c"], tmp_path / "site", about="", version="0",
                      source={"prepare": "resize", "size": 28, "invert": True})  # fmt: skip
    page = browser.new_page()
    page.goto((site / "index.html").as_uri())
    assert page.evaluate("demo.model.prepare") == "resize" and page.evaluate("demo.model.invert")
    box = page.locator("#pad").bounding_box()
    page.mouse.move(box["x"] + 60, box["y"] + 200)
    page.mouse.down()
    page.mouse.move(box["x"] + 220, box["y"] + 60, steps=8)
    page.mouse.up()
    page.wait_for_function("document.body.dataset.strokes === '1'")
    seen = np.array(page.evaluate("window.lastSeen"), dtype=float).reshape(28, 28)
    png = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    (tmp_path / "pad.png").write_bytes(base64.b64decode(png.split(",", 1)[1]))
    expected = load_resized(tmp_path / "pad.png", 28, invert=True).astype(float)
    assert np.abs(seen - expected).max() <= 1
    assert seen.max() == 255  # inverted: the black pad became white
    page.close()
