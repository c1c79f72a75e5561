"""`barenet export MODEL --web DIR`: a static draw-a-digit page that runs the network in the
browser, for any web host that serves files (or opened straight from the disk).

DIR gets five files:

    index.html   the page: a drawing pad, the answer, the bars, the 28x28 image seen
    barenet.js   the forward pass of every barenet layer in plain JavaScript (~150 lines)
    prepare.js   prepare_digit's steps in JavaScript: a drawing made into MNIST's form
    pad.js       the drawing pad, the same as `barenet serve`'s page uses
    model.js     the model: its layers (as the model file's configs), class names, and the
                 weights as one base64 string of little-endian float32

Why a small forward pass of our own rather than onnxruntime-web: it is readable beside
src/barenet/nn/reference.py (the point of barenet), needs no 10 MB WebAssembly runtime to ship
or download, and with the weights in a script rather than fetched, the page works from a
file:// URL as well as from a server. The cost is speed: measured in chromium on this project's
2-core machine, the `cnn` model answers in about 15 ms, a member of pilot 1's
`record` design (2 million weights; docs/results.md) in about 140 ms.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BarenetError
from ..nn.layers import Layer
from ..nn.model import Sequential

DEMO = Path(__file__).parent / "web" / "demo"
FILES = ("index.html", "barenet.js", "prepare.js", "pad.js", "model.js")
LAYERS = {"Reshape", "Flatten", "Dense", "DropConnect", "Conv2D", "MaxPool2D", "AvgPool2D",
          "GlobalPool", "SqueezeExcite", "BatchNorm", "ReLU", "Dropout"}  # fmt: skip


def _arrays(layer: Layer) -> dict[str, np.ndarray]:
    """A layer's parameters and buffers (BatchNorm's running statistics) by name."""
    found = dict(getattr(layer, "params", {}) or {})
    found.update(getattr(layer, "buffers", {}) or {})
    return {k: np.asarray(v, dtype="<f4") for k, v in found.items()}


def model_script(models: Sequence[Sequential], classes: list[str], about: str, version: str,
                 source: dict[str, Any] | None = None) -> str:  # fmt: skip
    """model.js: `const BARENET_MODEL = {...}` (see the module doc)."""
    chunks: list[bytes] = []
    offset = 0
    members = []
    for m in models:
        layers = []
        for i, layer in enumerate(m.layers):
            config: dict[str, Any] = dict(layer.config())
            if config["type"] not in LAYERS:
                raise BarenetError(f"cannot export layer {i} ({config['type']}) to the web demo: "
                                   "barenet.js has no forward pass for it")  # fmt: skip
            params = {}
            for name, a in _arrays(layer).items():
                chunks.append(a.ravel().tobytes())
                params[name] = [offset, a.size]
                offset += a.size
            layers.append({**config, "params": params})
        members.append(layers)
    resize = (source or {}).get("prepare") == "resize"
    model = {"classes": classes, "about": about, "barenet_version": version,
             "prepare": "resize" if resize else "photo",
             "invert": resize and bool((source or {}).get("invert")),
             "members": members, "weights": base64.b64encode(b"".join(chunks)).decode()}  # fmt: skip
    return "// written by `barenet export --web`: the model, for barenet.js\n" \
        f"const BARENET_MODEL = {json.dumps(model)};\n"  # fmt: skip


def export_web(models: Sequence[Sequential], classes: list[str], directory: str | Path, *,
               about: str, version: str, source: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """Write the demo into `directory`, which must not exist, be empty, or hold an earlier
    export (replaced whole). `source`: how the model's own data was prepared (metadata
    dataset.source), so that the page prepares a drawing the same way. Built in a temporary folder beside it, then renamed into place:
    an interrupted export leaves the old folder as it was."""
    target = Path(directory)
    if models[0].input_size != 28 * 28:
        raise BarenetError("the web demo draws 28x28 digits: this model reads "
                           f"{models[0].input_size} inputs")  # fmt: skip
    if target.exists():
        if not target.is_dir():
            raise BarenetError(f"{target}: exists and is not a folder")
        inside = {p.name for p in target.iterdir()}
        if inside and not inside <= set(FILES):
            raise BarenetError(f"{target}: a folder with other files in it; give a new or empty "
                               "folder (an earlier export there is replaced)")  # fmt: skip
    script = model_script(models, classes, about, version, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        for name in FILES[:3]:
            shutil.copyfile(DEMO / name, staging / name)
        shutil.copyfile(DEMO.parent / "pad.js", staging / "pad.js")  # the draw page's pad too
        (staging / "model.js").write_text(script, encoding="utf-8")
        staging.chmod(0o755)
        if target.exists():
            old = target.with_name(f".{target.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
