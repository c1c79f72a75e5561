"""Layers from their configs: what model files store (`Layer.config()`), checked field by field.

A model file holds each layer's type and sizes as JSON, never a module path, so a file keeps
loading whatever module a layer's code lives in.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .conv import Conv2D, MaxPool2D
from .layers import BatchNorm, Dense, DropConnect, Dropout, Flatten, Layer, ReLU, Reshape
from .pooling import GLOBAL_MODES, AvgPool2D, GlobalPool, SqueezeExcite


def _int(config: dict[str, Any], key: str, lo: int, hi: int = 1_000_000) -> int:
    v = config.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{config.get('type')} {key} must be an integer in {lo}..{hi}, not {v!r}")
    return v


def _number(config: dict[str, Any], key: str, lo: float, hi: float, *, hi_open: bool) -> float:
    v = config.get(key)
    ok = isinstance(v, float | int) and not isinstance(v, bool) and lo <= v
    ok = ok and (v < hi if hi_open else v <= hi)  # type: ignore[operator]
    if not ok:
        bound = f"[{lo}, {hi})" if hi_open else f"[{lo}, {hi}]"
        raise ValueError(f"{config.get('type')} {key} must be a number in {bound}, not {v!r}")
    return float(v)  # type: ignore[arg-type]


def _init(config: dict[str, Any]) -> str:
    init = config.get("init", "he")
    if init not in ("he", "glorot"):
        raise ValueError(f"{config.get('type')} init must be 'he' or 'glorot', not {init!r}")
    return str(init)


def layer_from_config(
    config: dict[str, Any], *, dtype: Any = np.float32, xp: ModuleType = np
) -> Layer:
    """Rebuild a layer (with zero parameters) from `Layer.config()`; ValueError if it is invalid."""
    kind = config.get("type")
    if kind in ("Dense", "DropConnect"):
        d, h = _int(config, "in_features", 1), _int(config, "out_features", 1)
        if kind == "DropConnect":
            p = _number(config, "p", 0, 1, hi_open=True)
            return DropConnect(d, h, p, init=_init(config), dtype=dtype, xp=xp)
        return Dense(d, h, init=_init(config), dtype=dtype, xp=xp)
    if kind == "Conv2D":
        return Conv2D(
            _int(config, "in_channels", 1, 100_000),
            _int(config, "out_channels", 1, 100_000),
            _int(config, "kernel_size", 1, 64),
            stride=_int(config, "stride", 1, 64),
            padding=_int(config, "padding", 0, 64),
            init=_init(config),
            dtype=dtype,
            xp=xp,
        )
    if kind == "MaxPool2D":
        return MaxPool2D(_int(config, "kernel_size", 1, 64), _int(config, "stride", 1, 64))
    if kind == "AvgPool2D":
        return AvgPool2D(_int(config, "kernel_size", 1, 64))
    if kind == "GlobalPool":
        if config.get("mode") not in GLOBAL_MODES:
            raise ValueError(f"GlobalPool mode must be one of {GLOBAL_MODES}, not "
                             f"{config.get('mode')!r}")  # fmt: skip
        return GlobalPool(str(config["mode"]))
    if kind == "SqueezeExcite":
        channels = _int(config, "channels", 1, 100_000)
        return SqueezeExcite(channels, _int(config, "reduction", 1, channels), dtype=dtype, xp=xp)
    if kind == "BatchNorm":
        return BatchNorm(
            _int(config, "num_features", 1),
            momentum=_number(config, "momentum", 0, 1, hi_open=False),
            eps=_number(config, "eps", 1e-12, 1, hi_open=False),
            dtype=dtype,
            xp=xp,
        )
    if kind == "ReLU":
        return ReLU()
    if kind == "Dropout":
        return Dropout(_number(config, "p", 0, 1, hi_open=True))
    if kind == "Flatten":
        return Flatten()
    if kind == "Reshape":
        shape = config.get("shape")
        if (
            not isinstance(shape, list)
            or not 1 <= len(shape) <= 4
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 100_000 for d in shape
            )  # fmt: skip
        ):
            raise ValueError(f"Reshape shape must be 1 to 4 sizes in 1..100000, not {shape!r}")
        return Reshape(tuple(shape))
    raise ValueError(f"unknown layer type {kind!r}")
