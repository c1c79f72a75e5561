"""The live training page: `barenet train --watch` serves it while the NumPy code trains, and
`barenet serve RUN_DIR` shows a finished run's page, static, under /run/ beside the draw page.

Routes (docs/web.md):

    GET  /              the page (barenet/apps/web/live.html)
    GET  /api/events    server-sent events: the run so far, then each new event as it happens
                        (train/monitor.py lists them); `id:` is the event's number, and a client
                        that reconnects with Last-Event-ID (or ?after=N) gets only newer ones
    GET  /api/state     the same events as one JSON object {"state", "events"}
    POST /api/control   {"action": "pause" | "resume" | "stop"} -> {"state": ...}
        errors  4xx with {"error": "..."}: 400 malformed JSON or a bad ?after, 413 a body over
                MAX_BODY bytes, 422 an unknown action, 409 a finished run (nothing to control)

The server runs in a thread of the training's process (uvicorn's event loop); a stream costs
the training a look at the event list five times a second. Closing the server ends every
stream after it has sent the last events.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..data import datasets
from ..errors import BarenetError
from ..files.modelfile import load_model
from ..nn.model import to_inputs
from ..train.loop import EpochRecord
from ..train.monitor import Monitor, confusion, first_layer_images
from ..train.recipes import Recipe
from .http import BadRequest, check_port, read_json

PAGE = Path(__file__).parent / "web" / "live.html"
POLL_SECONDS = 0.2  # how often a stream looks for new events
PING_SECONDS = 15.0  # a comment line keeps idle connections (and proxies) open
MAX_BODY = 10_000


def create_live_app(monitor: Monitor, *, live: bool, closing: threading.Event | None = None
                    ) -> Starlette:  # fmt: skip
    """The page for `monitor`'s run: `live` for a training in this process (the buttons work),
    else a finished run's. Streams end once `closing` is set."""
    closing = closing or threading.Event()

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    def after_of(request: Request) -> int:
        raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        if not raw.isdigit() or len(raw) > 18:
            raise ValueError(f"'after' (or Last-Event-ID) must be an event number, not {raw!r}")
        return int(raw)

    async def state(request: Request) -> Response:
        try:
            after = after_of(request)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse({"state": monitor.state, "live": live,
                             "events": monitor.events(after)})  # fmt: skip

    async def events(request: Request) -> Response:
        try:
            after = after_of(request)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)

        async def stream() -> AsyncIterator[str]:
            last, quiet = after, time.monotonic()
            yield f"retry: 2000\n: {'live' if live else 'finished'} run\n\n"
            while True:
                new = monitor.events(last)
                for e in new:
                    last = e["seq"]
                    yield f"id: {last}\ndata: {json.dumps(e)}\n\n"
                if new:
                    quiet = time.monotonic()
                elif closing.is_set():
                    return
                elif time.monotonic() - quiet > PING_SECONDS:
                    quiet = time.monotonic()
                    yield ": ping\n\n"
                await asyncio.sleep(POLL_SECONDS)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip

    async def control(request: Request) -> Response:
        try:
            payload = await read_json(request, MAX_BODY)
        except BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        action = payload.get("action") if isinstance(payload, dict) else None
        if action not in ("pause", "resume", "stop"):
            return JSONResponse({"error": 'send {"action": "pause"}, {"action": "resume"} or '
                                          '{"action": "stop"}'}, status_code=422)  # fmt: skip
        if not live or monitor.state in ("done", "stopped"):
            return JSONResponse({"error": "this run has finished: there is nothing to "
                                          f"{action}"}, status_code=409)  # fmt: skip
        getattr(monitor, action)()
        return JSONResponse({"state": monitor.state})

    return Starlette(routes=[
        Route("/", page),
        Route("/api/events", events),
        Route("/api/state", state),
        Route("/api/control", control, methods=["POST"]),
    ])  # fmt: skip


class Watch:
    """The live page served from a background thread while this process trains."""

    def __init__(self, monitor: Monitor, host: str = "127.0.0.1", port: int = 8000) -> None:
        check_port(host, port)
        self.closing = threading.Event()
        app = create_live_app(monitor, live=True, closing=self.closing)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                                timeout_graceful_shutdown=3)  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="barenet-watch", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise BarenetError(f"the live page could not start on {host}:{port}")
            time.sleep(0.02)
        self.url = f"http://{host}:{port}/"

    def close(self) -> None:
        """End the streams (after they have sent the last events) and the server."""
        self.closing.set()
        time.sleep(2 * POLL_SECONDS)
        self.server.should_exit = True
        self.thread.join(timeout=10)


def monitor_of_run(run_dir: Path) -> Monitor:
    """A finished run's events: its watch.json (written by every `barenet train`), or, for a
    run from before, what its history.json and model say (curves per epoch, the filters, and
    the confusion matrix on its validation split). For an ensemble, its first member."""
    if not (run_dir / "watch.json").exists() and not (run_dir / "history.json").exists():
        members = sorted(run_dir.glob("member-*"))  # an ensemble's run, finished or stopped
        if members:
            run_dir = members[0]
    watch = run_dir / "watch.json"
    if watch.exists():
        try:
            return Monitor.load(watch)
        except (ValueError, KeyError, TypeError) as e:
            raise BarenetError(f"{watch}: not a run's events ({e})") from None
    return _monitor_from_history(run_dir)


def _monitor_from_history(run_dir: Path) -> Monitor:
    try:
        history = json.loads((run_dir / "history.json").read_text())
        recipe = Recipe.from_dict(history["recipe"])
        records = [EpochRecord.from_dict(e) for e in history["epochs"]]
    except FileNotFoundError:
        raise BarenetError(f"{run_dir}: not a run directory (no watch.json or history.json)"
                           ) from None  # fmt: skip
    except (ValueError, KeyError, TypeError) as e:
        raise BarenetError(f"{run_dir / 'history.json'}: not a run's history ({e})") from None
    model, meta = load_model(run_dir / "model.npz")
    name = (meta.get("dataset") or {}).get("name", "mnist")
    dataset = datasets.load(name)
    monitor = Monitor(classes=list(dataset.spec.classes))
    monitor.begin(epochs=recipe.epochs, steps=0, batch_size=recipe.batch_size,
                  recipe=recipe.name, num_classes=model.num_classes, done=records)  # fmt: skip
    filters = first_layer_images(model, dataset.train_images.shape[1])
    if filters is not None:
        monitor.emit(filters)
    _, _, x_val, y_val = dataset.split(recipe.val_size)
    if x_val is not None and y_val is not None:  # trained on every image: no validation page
        proba = model.predict_proba(to_inputs(x_val))
        monitor.emit(confusion(len(records), proba, y_val, x_val))
    monitor.finish(stopped=False)
    return monitor
