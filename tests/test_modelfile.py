import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from barenet.errors import ModelFileError
from barenet.files.modelfile import load_model, model_arrays, save_model
from barenet.nn.model import mlp


@pytest.fixture
def saved(tmp_path):
    net = mlp([784, 16, 10], rng=np.random.default_rng(0))
    path = save_model(
        tmp_path / "model.npz", net, {"recipe": {"name": "seed"}, "test_accuracy": 0.9}
    )
    return net, path


def test_round_trip_identical_predictions(saved):
    net, path = saved
    again, meta = load_model(path)
    x = np.random.default_rng(1).random((50, 784), dtype=np.float32)
    np.testing.assert_array_equal(net.predict_proba(x), again.predict_proba(x))
    assert meta["test_accuracy"] == 0.9 and again.config() == net.config()


def test_directory_resolves_to_model_npz(saved):
    net, path = saved
    again, meta = load_model(path.parent)
    assert again.config() == net.config() and meta["test_accuracy"] == 0.9
    for (name, p, _), (_, q, _) in zip(net.parameters(), again.parameters()):
        np.testing.assert_array_equal(p, q, err_msg=name)


def test_no_pickle_in_the_file(saved):
    _, path = saved
    with np.load(path, allow_pickle=False) as z:  # would raise if any member needed pickle
        assert {"architecture", "metadata", "layers.0.W"} <= set(z.files)


def _rewrite(path, change):
    """Rewrite the archive member by member, letting `change(name, array)` alter them."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays = change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: {**a, "layers.0.W": a["layers.0.W"][:, :8]}, r"layers.0.W has shape \(784, 8\)"),
        (lambda a: {**a, "layers.2.b": a["layers.2.b"].astype(np.float64)}, "float64"),
        (lambda a: {k: v for k, v in a.items() if k != "layers.2.W"}, "missing array 'layers.2.W'"),
        (lambda a: {**a, "extra": np.zeros(3)}, "unexpected arrays"),
        (lambda a: {**a, "layers.2.b": np.full(10, np.nan, np.float32)}, "NaN"),
        (lambda a: {**a, "architecture": np.array("{not json")}, "not valid JSON"),
        (lambda a: {**a, "architecture": np.array(json.dumps({"format": "other"}))}, "not a barenet model"),
        (lambda a: {**a, "architecture": np.array(json.dumps({"format": "barenet-model", "version": 9}))},
         "version 9"),
        (lambda a: {**a, "architecture": np.array(json.dumps({"format": "barenet-model", "version": 1,
                                                              "layers": [{"type": "Magic"}]}))},
         "invalid architecture"),
        (lambda a: {**a, "metadata": np.zeros(3)}, "metadata is not a JSON text"),
        (lambda a: {**a, "metadata": np.array(json.dumps({"dataset": "mnist"}))},
         "metadata's dataset is not a name and 10 class names"),
        (lambda a: {**a, "metadata": np.array(json.dumps({"dataset": {"name": 7}}))},
         "metadata's dataset"),
        (lambda a: {**a, "metadata": np.array(json.dumps({"dataset": {"classes": ["0", "1"]}}))},
         "metadata's dataset"),
        (lambda a: {**a, "metadata": np.array(json.dumps({"dataset": {"classes": list(range(10))}}))},
         "metadata's dataset"),
    ],
)  # fmt: skip
def test_tampered_files_are_one_clear_error(saved, change, message):
    _, path = saved
    _rewrite(path, change)
    with pytest.raises(ModelFileError, match=message):
        load_model(path)


def test_dataset_metadata_with_a_name_only_loads(saved):
    _, path = saved
    meta = {"dataset": {"name": "fashion-mnist"}}
    _rewrite(path, lambda a: {**a, "metadata": np.array(json.dumps(meta))})
    assert load_model(path)[1] == meta


def test_object_array_is_refused_without_unpickling(saved):
    _, path = saved
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["layers.2.b"] = np.array([print] * 10, dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # numpy pickles the object array inside the .npy
    with pytest.raises(ModelFileError, match="layers.2.b"):
        load_model(path)


@pytest.mark.parametrize("cut", [0, 10, 1000, 0.5, 0.9, -10])
def test_truncated_file(saved, cut):
    _, path = saved
    data = path.read_bytes()
    path.write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(ModelFileError, match=str(path.name)):
        load_model(path)


def test_not_a_model_and_missing(tmp_path):
    (tmp_path / "x.npz").write_text("hello")
    with pytest.raises(ModelFileError, match="not a valid .npz"):
        load_model(tmp_path / "x.npz")
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "none.npz")


def test_failed_save_keeps_the_old_file(saved, monkeypatch):
    net, path = saved
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(OSError):
        save_model(path, net, {})
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["model.npz"]  # no temporary left


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_fuzz_byte_flips_never_crash(saved, data):
    net, path = saved
    original = path.read_bytes()
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    path.write_bytes(bytes(blob))
    try:
        again, _ = load_model(path)
    except ModelFileError:
        return
    finally:
        path.write_bytes(original)
    assert again.config() == net.config()  # a flip the loader accepts kept the structure intact


def test_a_null_byte_in_any_array_header_is_a_clear_error(saved):
    # Found by the fuzz test above: NumPy's header parser then raises tokenize.TokenError.
    net, path = saved
    original = path.read_bytes()
    key = b"'shape': ("
    starts = [i for i in range(len(original)) if original.startswith(key, i)]
    assert len(starts) == len(model_arrays(net)) + 2  # every array, architecture, metadata
    for i in starts:
        blob = bytearray(original)
        blob[original.index(b")", i)] = 0  # the shape's closing parenthesis
        path.write_bytes(bytes(blob))
        with pytest.raises(ModelFileError):  # a JSON member read to its end: a CRC error
            load_model(path)


def test_a_member_flagged_as_encrypted_is_a_clear_error(saved):
    # Found by fuzzing: zipfile raises RuntimeError ("password required") for such a member.
    _, path = saved
    blob = bytearray(path.read_bytes())
    central = blob.rindex(b"PK\x01\x02")  # the last member's central directory entry
    blob[central + 8] |= 1  # general purpose flags, bit 0: encrypted
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="corrupt model file"):
        load_model(path)


def test_zip_with_huge_declared_shape_is_refused_before_allocating(saved):
    _, path = saved
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 10**9)}
    )
    with zipfile.ZipFile(path, "w") as zf:
        for k, v in arrays.items():
            b = io.BytesIO()
            np.save(b, v)
            zf.writestr(
                f"{k}.npy",
                b.getvalue() if k != "layers.0.W" else b"\x93NUMPY\x01\x00" + buf.getvalue()[8:],
            )
    with pytest.raises(ModelFileError, match="layers.0.W has shape"):
        load_model(path)
