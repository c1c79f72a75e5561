"""Atomic file writing: a reader sees the old file or the whole new one, never a half-written one.

The data is written to a temporary file in the destination's directory, flushed to disk, and
renamed over the destination (`os.replace` is atomic on POSIX and Windows within one volume).
If anything fails before the rename, the temporary file is removed and the destination is untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path`; on a clean exit, rename it to `path`.

    Arguments:
        path: the destination file; its directory is created if missing.
        mode: "wb" for bytes or "w" for text (UTF-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = "utf-8" if mode == "w" else None
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        # BaseException: a Ctrl-C during the write must not leave the temporary file behind.
        Path(tmp).unlink(missing_ok=True)
        raise
