"""Model files: one .npz archive, read without pickle, checked against its own architecture.

Members:
    architecture.npy   JSON text: {"format": "barenet-model", "version": 1, "layers": [...]}
    metadata.npy       JSON text: recipe, seed, dataset and its checksums, accuracies, version
    layers.<i>.<key>.npy  each parameter, e.g. layers.0.W (784, 1024) float32, and each buffer,
                       e.g. layers.1.running_mean (32,) float32

Loading reads the architecture first, works out every parameter's expected name, shape and
dtype from it, and compares them with each member's .npy header before reading any data, so a
wrong, truncated or tampered file is one ModelFileError naming the file and the fault.
"""

from __future__ import annotations

import json
import os
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..backend.arrays import to_numpy
from ..errors import ModelFileError
from ..nn.model import Sequential
from .atomic import atomic_write

FORMAT, VERSION = "barenet-model", 1
MAX_JSON = 1 << 20  # architecture and metadata are small; refuse anything bigger


# What reading a damaged .npz archive can raise (checkpoints too), besides zipfile.BadZipFile.
READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    zlib.error,
    UnicodeDecodeError,
    NotImplementedError,
    SyntaxError,  # an .npy header that NumPy cannot parse (it reads it as a Python literal)
    tokenize.TokenError,
    RuntimeError,  # zipfile: a member whose flags say it is encrypted
)


def resolve(path: str | os.PathLike[str]) -> Path:
    """A model path: the .npz file itself, or a run directory that holds model.npz."""
    p = Path(path)
    return p / "model.npz" if p.is_dir() else p


def default_model_path() -> Path:
    """The trained model that ships inside the package (barenet/models/default.npz), used by
    `barenet predict` and `barenet serve` when no model is given."""
    path = Path(__file__).parent.parent / "models" / "default.npz"
    if not path.is_file():
        raise ModelFileError(f"{path}: the packaged default model is missing; give a model")
    return path


def resolve_all(path: str | os.PathLike[str]) -> list[Path]:
    """Every model file `path` names: the .npz file itself; a run directory's model.npz; or,
    for an ensemble's run directory, each member-<k>/model.npz in member order."""
    p = Path(path)
    if not p.is_dir() or (p / "model.npz").exists():
        return [resolve(p)]
    members = sorted(p.glob("member-*/model.npz"), key=lambda m: _member_number(m.parent.name))
    if not members:
        raise ModelFileError(f"{p}: no model.npz in this directory, and no member-*/model.npz")
    return members


def member_folder(run: Path, members: int, k: int) -> Path:
    """Where member k (0-based) of a run of `members` nets keeps its files: the run directory
    itself for a single net, run/member-(k + 1) in an ensemble (the layout resolve_all reads)."""
    return run if members == 1 else run / f"member-{k + 1}"


def _member_number(name: str) -> int:
    tail = name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else 1 << 30


def save_model(path: str | os.PathLike[str], model: Sequential, metadata: dict[str, Any]) -> Path:
    """Write `model` and `metadata` to `path` (a .npz file, or a directory: DIR/model.npz),
    atomically: an existing file is replaced only once the new one is complete."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path / "model.npz"
    arrays: dict[str, np.ndarray] = {
        "architecture": np.array(
            json.dumps({"format": FORMAT, "version": VERSION, "layers": model.config()})
        ),
        "metadata": np.array(json.dumps(metadata)),
    }
    for name, p in model_arrays(model).items():
        arrays[name] = to_numpy(p)  # from a GPU too
    with atomic_write(path) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]
    return path


def model_arrays(model: Sequential) -> dict[str, Any]:
    """Every array a model file holds for `model`: its parameters and its buffers, by name."""
    return {**{name: p for name, p, _ in model.parameters()}, **dict(model.buffers())}


def _json_member(z: zipfile.ZipFile, name: str, path: Path) -> Any:
    info = _member(z, name, path)
    if info.file_size > MAX_JSON:
        raise ModelFileError(
            f"{path}: {name} is {info.file_size} bytes, more than a model file holds"
        )
    with z.open(info) as f:
        arr = np.lib.format.read_array(f, allow_pickle=False)
    if arr.dtype.kind != "U" or arr.shape != ():
        raise ModelFileError(f"{path}: {name} is not a JSON text")
    try:
        return json.loads(str(arr))
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{path}: {name} is not valid JSON ({e})") from None


def _member(z: zipfile.ZipFile, name: str, path: Path) -> zipfile.ZipInfo:
    try:
        return z.getinfo(f"{name}.npy")
    except KeyError:
        raise ModelFileError(f"{path}: missing array {name!r}") from None


def load_model(path: str | os.PathLike[str]) -> tuple[Sequential, dict[str, Any]]:
    """Read a model file written by `save_model`.

    Returns: the network (float32, NumPy) and its metadata dict.
    Raises: ModelFileError for anything but a complete, consistent barenet model file.
    """
    path = resolve(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        with zipfile.ZipFile(path) as z:
            return _load(z, path)
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile):
        raise ModelFileError(
            f"{path}: not a barenet model file (not a valid .npz archive)"
        ) from None
    except READ_ERRORS as e:
        raise ModelFileError(f"{path}: corrupt model file ({type(e).__name__}: {e})") from None


def _load(z: zipfile.ZipFile, path: Path) -> tuple[Sequential, dict[str, Any]]:
    arch = _json_member(z, "architecture", path)
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a barenet model file (no '{FORMAT}' architecture)")
    if arch.get("version") != VERSION:
        raise ModelFileError(
            f"{path}: model format version {arch.get('version')!r}, this barenet reads {VERSION}"
        )
    metadata = _json_member(z, "metadata", path)
    if not isinstance(metadata, dict):
        raise ModelFileError(f"{path}: metadata is not a JSON object")
    try:
        model = Sequential.from_config(arch.get("layers"))  # type: ignore[arg-type]
    except ValueError as e:
        raise ModelFileError(f"{path}: invalid architecture ({e})") from None

    _check_dataset(metadata.get("dataset"), model.num_classes, path)
    expected = model_arrays(model)
    present = {n[:-4] for n in z.namelist() if n.endswith(".npy")} - {"architecture", "metadata"}
    if present - expected.keys():
        raise ModelFileError(f"{path}: unexpected arrays {sorted(present - expected.keys())}")
    for name, target in expected.items():
        info = _member(z, name, path)
        with z.open(info) as f:
            version = np.lib.format.read_magic(f)
            reader = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }
            if version not in reader:
                raise ModelFileError(f"{path}: {name} has an unsupported .npy version {version}")
            shape, fortran, dtype = reader[version](f)
            if shape != target.shape or dtype != target.dtype:
                raise ModelFileError(
                    f"{path}: array {name} has shape {shape} {dtype}, the architecture needs "
                    f"{target.shape} {target.dtype}"
                )
        with z.open(info) as f:
            data = np.lib.format.read_array(f, allow_pickle=False)
        if not np.all(np.isfinite(data)):
            raise ModelFileError(f"{path}: array {name} holds NaN or infinite values")
        target[...] = data
    return model, metadata


def _check_dataset(dataset: Any, classes: int, path: Path) -> None:
    """The metadata's dataset, where a file names one: {"name": str, "classes": [str] * C, ...}
    (`barenet train` writes its checksums too); the commands print its name and class names."""
    if dataset is None:
        return
    if isinstance(dataset, dict):
        name, names = dataset.get("name", ""), dataset.get("classes", [""] * classes)
        if (
            isinstance(name, str)
            and isinstance(names, list)
            and len(names) == classes
            and all(isinstance(n, str) for n in names)
        ):
            return
    raise ModelFileError(f"{path}: metadata's dataset is not a name and {classes} class names")
