"""`barenet serve`: the JSON endpoint (valid, malformed and hostile requests, concurrency) and
the draw-a-digit page in a real browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import uvicorn
from conftest import draw, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from starlette.testclient import TestClient

from barenet.apps.serve import MAX_BODY, create_app
from barenet.files.modelfile import default_model_path
from barenet.train.ensemble import load_ensemble

CLASSES = [str(c) for c in range(10)]


MODEL = load_ensemble([default_model_path()])[0][0]


@pytest.fixture(scope="module")
def app():
    return create_app([MODEL], CLASSES)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def png_data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_pixels_and_images_are_classified(client, mnist):
    r = client.post("/api/predict", json={"pixels": mnist.test_images[0].tolist()})
    assert r.status_code == 200
    out = r.json()
    assert out["prediction"] == "7" and abs(sum(out["probabilities"]) - 1) < 1e-4
    assert np.array_equal(np.array(out["seen"]), mnist.test_images[0])
    big = np.asarray(Image.fromarray(255 - mnist.test_images[1]).resize((300, 300)))
    r = client.post("/api/predict", json={"image": png_data_url(big)})
    assert r.status_code == 200 and r.json()["prediction"] == "2"
    assert np.array(r.json()["seen"]).shape == (28, 28)


def test_the_inside_view_shows_every_layer_and_the_deciding_pixels(client, mnist):
    image = mnist.test_images[0]  # a 7
    out = client.post("/api/predict", json={"pixels": image.tolist()}).json()
    assert [layer["name"] for layer in out["layers"]][:2] == ["Reshape", "Conv2D 1->32 3x3"]
    assert len(out["layers"]) == len(MODEL.layers)
    conv = out["layers"][1]
    assert conv["shape"] == [28, 28, 32] and len(conv["maps"]) == 16
    assert np.array(conv["maps"]).shape == (16, 14, 14) and 0 <= np.min(conv["maps"])
    assert np.max(conv["maps"]) <= 1
    last = out["layers"][-1]
    assert last["shape"] == [10] and np.argmax(last["units"]) == 7  # the scores
    saliency = np.array(out["saliency"])
    assert saliency.shape == (28, 28) and np.abs(saliency).max() == 1
    assert out["explained"] == "7"
    assert np.all(saliency[image == 0] == 0)  # input x gradient: blank pixels decide nothing
    why_not = client.post("/api/predict", json={"pixels": image.tolist(), "explain": "1"}).json()
    assert why_not["explained"] == "1" and why_not["prediction"] == "7"
    assert not np.array_equal(why_not["saliency"], out["saliency"])
    for bad in (10, -1, "x", True, 2.5, None):
        r = client.post("/api/predict", json={"pixels": image.tolist(), "explain": bad})
        assert r.status_code == 422 and "explain" in r.json()["error"]


def test_the_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and '<canvas id="pad"' in r.text


@pytest.mark.parametrize(
    "body,status,fragment",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"[1, 2]", 400, "must be an object"),
        (json.dumps({"pixels": [[0] * 28] * 27}).encode(), 422, "shape (27, 28)"),
        (json.dumps({"pixels": [[300] * 28] * 28}).encode(), 422, "from 0 to 255"),
        (json.dumps({"pixels": "abc"}).encode(), 422, "28 rows"),
        (json.dumps({"image": "data:image/png;base64,@@@"}).encode(), 422, "not valid base64"),
        (
            json.dumps({"image": base64.b64encode(b"hello there").decode()}).encode(),
            422,
            "not an image",
        ),
        (json.dumps({"image": png_data_url(np.zeros((50, 50), np.uint8))}).encode(), 422, "blank"),
        (json.dumps({"other": 1}).encode(), 422, "send"),
        (b"x" * (MAX_BODY + 1), 413, "over"),
    ],  # fmt: skip
)
def test_bad_requests_get_a_4xx_with_a_message(client, body, status, fragment):
    r = client.post("/api/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status and fragment in r.json()["error"]


def test_a_decompression_bomb_is_refused(client):
    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, "PNG")
    assert len(buf.getvalue()) < MAX_BODY
    r = client.post("/api/predict", json={"image": base64.b64encode(buf.getvalue()).decode()})
    assert r.status_code == 422 and "too large" in r.json()["error"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.one_of(st.binary(max_size=300), st.from_regex(r'\{"(image|pixels)": .{0,40}\}'),
                      st.builds(lambda b: json.dumps({"image": base64.b64encode(b).decode()}),
                                st.binary(max_size=200))))  # fmt: skip
def test_fuzzed_bodies_never_crash_the_server(client, body):
    data = body.encode() if isinstance(body, str) else body
    r = client.post("/api/predict", content=data)
    assert r.status_code in (200, 400, 413, 422), r.text
    assert ("error" in r.json()) == (r.status_code != 200)


PIXELS = np.zeros((28, 28), dtype=int)
PIXELS[6:22, 12:16] = 255  # a "1"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(explain=st.one_of(st.none(), st.booleans(), st.integers(-20, 20), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=6), st.lists(st.integers(), max_size=3),
                         st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))  # fmt: skip
def test_fuzzed_explain_fields_get_an_answer_or_a_422(client, explain):
    r = client.post("/api/predict", json={"pixels": PIXELS.tolist(), "explain": explain})
    valid = (isinstance(explain, int) and not isinstance(explain, bool) and 0 <= explain < 10) or (
        isinstance(explain, str) and explain in CLASSES
    )
    assert r.status_code == (200 if valid else 422), r.text
    if valid:
        assert r.json()["explained"] == CLASSES[explain if isinstance(explain, int) else
                                                 CLASSES.index(explain)]  # fmt: skip
    else:
        assert "explain" in r.json()["error"]


@pytest.fixture(scope="module")
def live_server(app):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_concurrent_requests(live_server, mnist):
    def ask(i: int) -> tuple[int, str]:
        body = json.dumps({"pixels": mnist.test_images[i].tolist()}).encode()
        req = urllib.request.Request(f"{live_server}/api/predict", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())["prediction"]

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(ask, range(48)))
    assert all(status == 200 for status, _ in results)
    predicted = np.array([int(p) for _, p in results])
    assert np.mean(predicted == mnist.test_labels[:48]) >= 0.95


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                    "(apt-get install chromium chromium-driver; .ci/run does it as root)")  # fmt: skip
def test_drawing_in_a_real_browser(live_server):
    from playwright.sync_api import sync_playwright

    # Strokes in the 280x280 pad's coordinates, drawn the way a person draws each digit.
    digits = {
        "1": [[(140, 40), (140, 240)]],
        "7": [[(70, 50), (210, 50)], [(210, 50), (110, 240)]],
        "0": [
            [(140 + 60 * np.sin(t), 140 - 90 * np.cos(t)) for t in np.linspace(0, 2 * np.pi, 40)]
        ],
    }
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(live_server)
            for label, strokes in digits.items():
                page.click("#clear")
                # After each stroke the page asks the server and redraws the bars.
                draw(page, strokes, "document.body.dataset.strokes === '{n}' && "
                                    "document.body.dataset.busy === '0'")  # fmt: skip
                said = page.inner_text("#prediction").rstrip("?")
                values = [float(page.inner_text(f"#value-{c}").rstrip("%")) for c in range(10)]
                assert said == label, (label, said, values)
                assert abs(sum(values) - 100) < 1.0 and max(values) == values[int(label)]
                assert page.locator("#seen").is_visible()
                # the inside view: every layer, feature maps, and the pixels that decided it
                assert page.locator("#layers .layer").count() == len(MODEL.layers)
                assert page.locator("#layers .maps canvas").count() > 0
                assert page.inner_text("#explained") == label
                painted = page.evaluate("""() => {
                    const d = document.getElementById("saliency").getContext("2d")
                        .getImageData(0, 0, 28, 28).data;
                    let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; }""")
                assert painted == 28 * 28
            # "why not 1?": clicking another class explains that one
            page.click(".bar-row[data-class='1']")
            page.wait_for_function("document.getElementById('explained').textContent === '1' "
                                   "&& document.body.dataset.busy === '0'")  # fmt: skip
            assert page.inner_text("#prediction").rstrip("?") == "0"
            page.click("#clear")
            assert page.inner_text("#prediction") == ""
        finally:
            browser.close()


def test_dense_models_report_their_most_active_hidden_units(mnist):
    from barenet.nn.model import mlp

    net = mlp([784, 32, 10], rng=np.random.default_rng(0))
    with TestClient(create_app([net], CLASSES)) as c:
        r = c.post("/api/predict", json={"pixels": mnist.test_images[0].tolist()})
    hidden = r.json()["hidden"]
    assert r.status_code == 200 and 1 <= len(hidden) <= 8
    activations = [h["activation"] for h in hidden]
    assert activations == sorted(activations, reverse=True) and activations[-1] > 0
    assert np.array(hidden[0]["weights"]).shape == (28, 28)
    assert np.abs(np.array(hidden[0]["weights"])).max() == pytest.approx(1.0)


def test_serve_on_a_taken_port_is_one_clear_error():
    import subprocess
    import sys

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "barenet", "serve", "--port", str(port)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert (
        p.stderr.strip()
        .splitlines()[-1]
        .startswith(f"barenet: error: cannot listen on 127.0.0.1:{port}")
    )
