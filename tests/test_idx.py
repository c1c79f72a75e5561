import gzip

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from barenet.data.idx import idx_bytes, parse_idx, read_idx, write_idx
from barenet.errors import DataError


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_round_trip(tmp_path, dtype, suffix):
    a = (np.arange(2 * 3 * 4) - 7).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / f"a-idx3{suffix}"
    write_idx(path, a)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    b = read_idx(path)
    assert b.dtype == np.dtype(dtype).newbyteorder("=") and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_header_layout():
    data = idx_bytes(np.zeros((2, 3), np.uint8))
    assert data[:4] == b"\x00\x00\x08\x02"
    assert data[4:12] == b"\x00\x00\x00\x02\x00\x00\x00\x03"
    assert len(data) == 12 + 6


def test_gzip_detected_by_content_not_name(tmp_path):
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(idx_bytes(np.array([1, 2, 3], np.uint8))))
    np.testing.assert_array_equal(read_idx(path), [1, 2, 3])


def test_wrong_magic_names_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, np.zeros(5, np.uint8))  # a label file, magic 0x00000801
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: not an IDX image file "
                                        r"\(magic 0x00000801, expected 0x00000803\)"):  # fmt: skip
        read_idx(path, expect_magic=0x803, expect_kind="IDX image")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "two zero bytes"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX element type 0x07"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x02\x00\x00\x00\x02", "too short"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", "too short"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "extra bytes"),
        (b"\x00\x00\x0e\x03\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", "more than"),
    ],
)
def test_malformed(tmp_path, data, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(data)
    with pytest.raises(DataError, match=message):
        read_idx(path)


def test_corrupt_gzip_and_missing_file(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(100, np.uint8)))[:30])
    with pytest.raises(DataError, match="x.gz"):
        read_idx(path)
    with pytest.raises(DataError, match="cannot open"):
        read_idx(tmp_path / "nope")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_parse_never_crashes(data):
    try:
        a = parse_idx(data)
    except DataError:
        return
    assert idx_bytes(a) == data  # whatever parses must be exactly the file it came from


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4), st.sampled_from(["u1", ">i4", ">f8"]))
def test_fuzz_round_trip(shape, dtype):
    a = np.arange(int(np.prod(shape))).astype(dtype).reshape(shape)
    np.testing.assert_array_equal(parse_idx(idx_bytes(a)), a)
