"""The array module the engine computes with.

The engine never imports an array library directly for computation: it asks `array_module(x)`
for the module that owns its input (NumPy by default) and calls `xp.maximum`, `xp.exp`, ... on
it. A GPU library with NumPy's interface (CuPy) is used the same way: build the model with
`xp=cupy` and feed it CuPy arrays; no layer needs rewriting.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def array_module(x: Any) -> ModuleType:
    """The array module (numpy or cupy) that owns array `x`."""
    if type(x).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of `x` if it lives on another device, else `x` itself."""
    if isinstance(x, np.ndarray):
        return x
    get = getattr(x, "get", None)
    return get() if callable(get) else np.asarray(x)


def kept_array(
    store: dict[str, Any], name: str, shape: tuple[int, ...], dtype: Any, xp: Any
) -> Any:
    """store[name] if it is an array of this shape, dtype and module, else a new zero array put
    there: a layer's working array kept from one training step to the next (`Conv2D.work`
    says why). The caller rewrites what it uses; what no step writes stays zero."""
    kept = store.get(name)
    if kept is None or kept.shape != shape or kept.dtype != dtype or array_module(kept) is not xp:
        kept = store[name] = xp.zeros(shape, dtype=dtype)
    return kept
