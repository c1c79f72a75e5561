"""`barenet serve`: a local web page to draw a digit and watch the network read it.

Built on Starlette (ASGI) and served by uvicorn. Two routes:

    GET  /              the draw-a-digit page (barenet/apps/web/index.html)
    POST /api/predict   JSON in, JSON out (docs/web.md):
        request   {"image": "data:image/png;base64,..."}   a drawing or photo of one digit, or
                  {"pixels": [[...28 numbers 0-255...] x 28]}  an MNIST-style image as it is
        response  {"prediction": "7", "probabilities": [10 numbers], "classes": [...],
                   "confident": true, "seen": [[28 x 28 numbers 0-255]],
                   "hidden": [{"unit": j, "activation": a, "weights": [[28 x 28]]}, ...]}
                  ("hidden": the first dense layer's most active units, [] for a CNN),
                   "layers": [{"name": "Conv2D 1->32 3x3", "shape": [28, 28, 32],
                               "maps": [[[14 x 14 numbers 0-1]] x up to 16]}, ...,
                              {"name": "Dense 3136->256", "shape": [256],
                               "units": [up to 64 numbers]}, ...],
                   "explained": "7", "saliency": [[28 x 28 numbers -1..1]]}
                  ("layers": every layer's output, of the first model of an ensemble;
                   "saliency": input x gradient of the class "explained", which is the
                   prediction, or the class the request names by "explain": index or name)
        errors    4xx with {"error": "..."}: 413 for a body over MAX_BODY bytes, 400 for
                  malformed JSON, 422 for a wrong shape, non-image data or a blank image.

The model is read once at start-up; each request runs in a worker thread (NumPy releases the
GIL in its kernels), so requests are served concurrently.
"""

from __future__ import annotations

import base64
import binascii
import sys
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from ..data.images import decode_image, prepare_digit
from ..errors import BarenetError, ImageError
from ..nn.inside import activations, attribution
from ..nn.layers import Dense, ReLU
from ..nn.model import Sequential
from ..nn.trace import describe
from ..train.ensemble import average_proba
from ..train.monitor import Monitor
from .http import BadRequest, check_port, read_json
from .live import create_live_app

MAX_BODY = 2_000_000  # bytes: a 280x280 canvas PNG is ~10 kB; a phone photo should be resized
PAGE = Path(__file__).parent / "web" / "index.html"
PAD = Path(__file__).parent / "web" / "pad.js"  # the drawing pad, shared with export --web
TOP_UNITS = 8
MAX_MAPS, MAX_UNITS, MAP_SIZE = 16, 64, 14  # the inside view's feature maps and units


def _layer_view(name: str, out: np.ndarray) -> dict[str, Any]:
    """One layer's output for the page: up to MAX_MAPS feature maps, each scaled to [0, 1] and
    averaged down to at most MAP_SIZE pixels a side, or up to MAX_UNITS units."""
    view: dict[str, Any] = {"name": name, "shape": list(out.shape[1:])}
    if out.ndim == 4:
        maps = np.asarray(out[0, :, :, :MAX_MAPS], dtype=np.float64)  # (H, W, K)
        H, W, _ = maps.shape
        f = max(1, -(-max(H, W) // MAP_SIZE))  # the smallest factor that fits MAP_SIZE
        if f > 1:
            maps = maps[: H - H % f, : W - W % f]
            maps = maps.reshape(H // f, f, W // f, f, -1).mean(axis=(1, 3))
        lo, hi = maps.min(axis=(0, 1)), maps.max(axis=(0, 1))
        maps = (maps - lo) / np.where(hi > lo, hi - lo, 1)
        view["maps"] = np.round(maps.transpose(2, 0, 1), 3).tolist()
    else:
        view["units"] = [round(float(v), 4) for v in np.ravel(out[0])[:MAX_UNITS]]
    return view


def _explained(payload: dict[str, Any], classes: list[str], predicted: int) -> int:
    """The class the saliency explains: the request's "explain" (index or name), else the
    prediction."""
    if "explain" not in payload:
        return predicted
    e = payload["explain"]
    if isinstance(e, int) and not isinstance(e, bool) and 0 <= e < len(classes):
        return e
    if isinstance(e, str) and e in classes:
        return classes.index(e)
    raise BadRequest(422, f"'explain' must be a class index 0..{len(classes) - 1} or a class "
                     f"name, not {e!r}")  # fmt: skip


def _pixels(payload: dict[str, Any]) -> np.ndarray:
    """The request's digit as the (28, 28) uint8 image the network will see."""
    if "pixels" in payload:
        try:
            arr = np.asarray(payload["pixels"], dtype=np.float64)
        except (TypeError, ValueError):
            raise BadRequest(422, "'pixels' must be 28 rows of 28 numbers") from None
        if arr.shape != (28, 28):
            raise BadRequest(422, f"'pixels' must be 28 rows of 28 numbers, not shape {arr.shape}")
        if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 255:
            raise BadRequest(422, "'pixels' must be numbers from 0 to 255")
        return np.rint(arr).astype(np.uint8)
    data = payload.get("image")
    if not isinstance(data, str):
        raise BadRequest(422, 'send {"image": "data:image/png;base64,..."} or {"pixels": ...}')
    encoded = data.split(",", 1)[1] if data.startswith("data:") else data
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(422, "'image' is not valid base64") from None
    try:
        return prepare_digit(decode_image(raw))
    except ImageError as e:
        raise BadRequest(422, f"'image': {e}") from None


def _hidden_units(model: Sequential, x: np.ndarray) -> list[dict[str, Any]]:
    """The first dense layer's most active units for input x (1, 784), with their weights."""
    layers = model.layers
    if not (len(layers) > 1 and isinstance(layers[0], Dense) and isinstance(layers[1], ReLU)):
        return []
    first = layers[0]
    W = first.params["W"]  # (784, H)
    activation = np.maximum(x @ W + first.params["b"], 0)[0]  # (H,)
    top = np.argsort(-activation)[:TOP_UNITS]
    return [
        {
            "unit": int(j),
            "activation": float(activation[j]),
            "weights": np.round(W[:, j].reshape(28, 28) / (np.abs(W[:, j]).max() or 1), 3).tolist(),
        }
        for j in top
        if activation[j] > 0
    ]


def create_app(
    models: list[Sequential],
    classes: list[str],
    min_confidence: float = 0.5,
    run: Monitor | None = None,
) -> Starlette:
    """The web application for `models` (averaged when several); with `run`, the page of
    their training under /run/ (apps/live.py)."""
    if models[0].input_size != 28 * 28:
        raise BarenetError("barenet serve needs a model that reads 28x28 images")

    def predict(payload: dict[str, Any]) -> dict[str, Any]:
        image = _pixels(payload)
        x = image.reshape(1, -1).astype(np.float32) / np.float32(255)
        p = average_proba(models, x)[0]
        c = int(p.argmax())
        e = _explained(payload, classes, c)
        outs = activations(models[0], x)
        layers = [_layer_view(describe(layer), out) for layer, out in zip(models[0].layers, outs)]
        saliency = np.mean([attribution(m, x, e) for m in models], axis=0).reshape(28, 28)
        saliency /= np.abs(saliency).max() or 1.0
        return {
            "prediction": classes[c],
            "probabilities": [round(float(v), 6) for v in p],
            "classes": classes,
            "confident": bool(p[c] >= min_confidence),
            "seen": image.tolist(),
            "hidden": _hidden_units(models[0], x) if len(models) == 1 else [],
            "layers": layers,
            "explained": classes[e],
            "saliency": np.round(saliency, 3).tolist(),
        }

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    async def pad_script(request: Request) -> Response:
        return Response(PAD.read_text(encoding="utf-8"), media_type="text/javascript")

    async def api_predict(request: Request) -> Response:
        try:
            payload = await read_json(request, MAX_BODY)
            if not isinstance(payload, dict):
                raise BadRequest(400, "the JSON body must be an object")
            result = await run_in_threadpool(predict, payload)
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        return JSONResponse(result)

    routes: list[BaseRoute] = [Route("/", page), Route("/pad.js", pad_script),
                               Route("/api/predict", api_predict, methods=["POST"])]  # fmt: skip
    if run is not None:
        routes.append(Mount("/run", create_live_app(run, live=False)))
    return Starlette(routes=routes)


def serve(models: list[Sequential], classes: list[str], host: str, port: int,
          min_confidence: float = 0.5, run: Monitor | None = None) -> None:  # fmt: skip
    """Run the server until interrupted (Ctrl-C)."""
    import uvicorn

    app = create_app(models, classes, min_confidence, run)
    check_port(host, port)
    print(f"barenet: serving on http://{host}:{port}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
    if run is not None:
        print(f"barenet: the run's training page on http://{host}:{port}/run/", file=sys.stderr,
              flush=True)  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=1)
