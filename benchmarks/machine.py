"""What a benchmark ran on, recorded beside every figure: CPU, cores, versions, the commit, and
the OpenBLAS kernel NumPy used (threadpoolctl's `architecture`; `OPENBLAS_CORETYPE` forces it)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

from barenet import __version__


def commit() -> str | None:
    """The checked-out commit (with "+changes" when the work tree differs), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def blas_kernel() -> str:
    """NumPy's BLAS and the kernel it runs, e.g. "openblas 0.3.31 SkylakeX, 2 threads"."""
    for lib in threadpool_info():
        if lib.get("user_api") == "blas":
            return (f"{lib.get('internal_api')} {lib.get('version')} "
                    f"{lib.get('architecture')}, {lib.get('num_threads')} threads")  # fmt: skip
    return "unknown"


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__, "barenet": __version__,
            "commit": commit(), "blas": blas_kernel(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}  # fmt: skip
    for mod in ("torch", "sklearn"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = None
    return info
