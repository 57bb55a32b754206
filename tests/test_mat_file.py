"""MATLAB MAT-files of proposals (data/mat_file.py): level 5 compressed and not, both byte orders, v7.3 (HDF5).

Two independent writers check the reader: scipy.io.savemat (files embedded below, as scipy 1.17.1 wrote them:
scipy is not a dependency) and the tests' own writer from the format's specification (tests/mat_files.py),
which stores whole numbers as MATLAB does, in the smallest integer type, and uses the small data elements.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from mat_files import Cell, write_v5, write_v73

from frcnn_cli.data import mat_file
from frcnn_cli.data.mat_file import read_mat
from frcnn_cli.errors import DataError

# scipy.io.savemat({"images": 3x1 cell ['000001', '000002', 'img_ü'], "boxes": 1x3 cell [[10 20 30 40; 1 2 3 4],
# zeros(0, 4), [5.5 6 7 8]], "other": [0 1 2; 3 4 5]}, do_compression=True / False)
SCIPY_COMPRESSED = (
    "TUFUTEFCIDUuMCBNQVQtZmlsZSBQbGF0Zm9ybTogcG9zaXgsIENyZWF0ZWQgb246IE1vbiBEZWMgIDcgMTg6NDA6NTAgMjAyNgAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABSU0PAAAATAAAAHic42NgYPgAxGxAzAHE"
    "jAwQwArlM0PFGKFqMnMT01OLGRj4gGwLJH0saPpg6mHmCUD5BiBgSKF+I+L0s2LRn5mbHn94DwMDAJwOCoIPAAAAcQAAAHic42Ng"
    "YLBgZGBgA9IcQAxkggErEp8ZSoPEkvIrUouBNB8QFzAg9LGh6WMCYhYk8ziB2IEBBlSgzA/2ENoEJgWl7aA0B5R2gdICDiB7DfDY"
    "y4DFXgaoewPw6GPEok8B7l4xqP0SUFoGSis4AADR4gnkDwAAADsAAAB4nONjYGDIAGI2IOYAYj4GCGCF8pmAmBmIGaFi+SUZqUVA"
    "mgeIDRgQgBlKM0JpFijNhGQeCAAA1p0DGA==")
SCIPY_PLAIN = (
    "TUFUTEFCIDUuMCBNQVQtZmlsZSBQbGF0Zm9ybTogcG9zaXgsIENyZWF0ZWQgb246IE1vbiBEZWMgIDcgMTg6NDA6NTAgMjAyNgAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABSU0OAAAA8AAAAAYAAAAIAAAAAQAAAAAA"
    "AAAFAAAACAAAAAMAAAABAAAAAQAAAAYAAABpbWFnZXMAAA4AAAA4AAAABgAAAAgAAAAEAAAAAAAAAAUAAAAIAAAAAQAAAAYAAAAB"
    "AAAAAAAAABAAAAAGAAAAMDAwMDAxAAAOAAAAOAAAAAYAAAAIAAAABAAAAAAAAAAFAAAACAAAAAEAAAAGAAAAAQAAAAAAAAAQAAAA"
    "BgAAADAwMDAwMgAADgAAADgAAAAGAAAACAAAAAQAAAAAAAAABQAAAAgAAAABAAAABQAAAAEAAAAAAAAAEAAAAAYAAABpbWdfw7wA"
    "AA4AAAA4AQAABgAAAAgAAAABAAAAAAAAAAUAAAAIAAAAAQAAAAMAAAABAAAABQAAAGJveGVzAAAADgAAAHAAAAAGAAAACAAAAAYA"
    "AAAAAAAABQAAAAgAAAACAAAABAAAAAEAAAAAAAAACQAAAEAAAAAAAAAAAAAkQAAAAAAAAPA/AAAAAAAANEAAAAAAAAAAQAAAAAAA"
    "AD5AAAAAAAAACEAAAAAAAABEQAAAAAAAABBADgAAADAAAAAGAAAACAAAAAYAAAAAAAAABQAAAAgAAAAAAAAABAAAAAEAAAAAAAAA"
    "CQAAAAAAAAAOAAAAUAAAAAYAAAAIAAAABgAAAAAAAAAFAAAACAAAAAEAAAAEAAAAAQAAAAAAAAAJAAAAIAAAAAAAAAAAABZAAAAA"
    "AAAAGEAAAAAAAAAcQAAAAAAAACBADgAAAGgAAAAGAAAACAAAAA4AAAAAAAAABQAAAAgAAAACAAAAAwAAAAEAAAAFAAAAb3RoZXIA"
    "AAAMAAAAMAAAAAAAAAAAAAAAAwAAAAAAAAABAAAAAAAAAAQAAAAAAAAAAgAAAAAAAAAFAAAAAAAAAA==")

BOXES = [np.array([[10.0, 20, 30, 40], [1, 2, 3, 4]]), np.zeros((0, 4)), np.array([[5.5, 6, 7, 8]])]


def _assert_boxes(found, expected=BOXES):
    assert len(found) == len(expected)
    for got, want in zip(found, expected):
        if want.size:
            np.testing.assert_array_equal(got, want)
        else:
            assert got.size == 0


@pytest.mark.parametrize("encoded", [SCIPY_COMPRESSED, SCIPY_PLAIN], ids=["compressed", "plain"])
def test_files_written_by_scipy_are_read_value_for_value(tmp_path, encoded):
    path = tmp_path / "ss.mat"
    path.write_bytes(base64.b64decode(encoded))
    found = read_mat(path, ("images", "boxes", "other", "absent"))
    assert found["images"] == ["000001", "000002", "img_ü"]
    _assert_boxes(found["boxes"])
    np.testing.assert_array_equal(found["other"], [[0, 1, 2], [3, 4, 5]])  # column-major data, 2 x 3
    assert "absent" not in found


@pytest.mark.parametrize("compressed", [True, False], ids=["v7-compressed", "v6-plain"])
@pytest.mark.parametrize("big_endian", [False, True], ids=["little-endian", "big-endian"])
def test_level_5_files_in_both_byte_orders_with_matlabs_compact_integers(tmp_path, compressed, big_endian):
    # [1 2 3 4] is stored as uint8 in a small data element, [.. 300 ..] as uint16, 5.5 as double
    boxes = [np.array([[1.0, 2, 3, 4]]), np.array([[1.0, 2, 300, 4], [7, 8, 9, 10]]), np.array([[5.5, 6, 7, 8]])]
    path = write_v5(tmp_path / "ss.mat", {"junk": np.ones((2, 2)), "images": Cell(["a", "b", "c"]),
                                          "boxes": Cell(boxes, row=True)}, compressed=compressed,
                    big_endian=big_endian)
    found = read_mat(path, ("images", "boxes"))
    assert found["images"] == ["a", "b", "c"]
    _assert_boxes(found["boxes"], boxes)


def test_v73_files_read_through_hdf5_references_with_reversed_dimensions(tmp_path):
    path = write_v73(tmp_path / "ss.mat", {"images": Cell(["000001", "000002", "x"]), "boxes": Cell(BOXES, row=True)})
    found = read_mat(path, ("images", "boxes"))
    assert found["images"] == ["000001", "000002", "x"]
    _assert_boxes(found["boxes"])  # a 2 x 4 MATLAB matrix is a 4 x 2 HDF5 dataset


def test_a_char_matrix_gives_one_id_per_row(tmp_path):
    # scipy.io.savemat({"images": np.array(["000012", "300045"])}): a 2 x 6 char array, UTF-8, column-major
    body = base64.b64decode("DgAAAEgAAAAGAAAACAAAAAQAAAAAAAAABQAAAAgAAAACAAAABgAAAAEAAAAGAAAAaW1hZ2VzAAAQAAAADAAAADAz"
                            "MDAwMDAwMTQyNQAAAAA=")
    assert bytes(body[-16:-4]) == b"030000001425"
    path = tmp_path / "ids.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file".ljust(116) + bytes(8) + b"\x00\x01IM" + body)
    assert read_mat(path, ("images",))["images"] == ["000012", "300045"]


def test_a_file_that_is_not_a_mat_file_is_a_clean_error(tmp_path):
    path = tmp_path / "ss.mat"
    path.write_text("image,x1,y1,x2,y2\n")
    with pytest.raises(DataError, match="not a MATLAB MAT-file"):
        read_mat(path, ("boxes",))


def test_a_file_cut_short_is_a_clean_error(tmp_path):
    path = write_v5(tmp_path / "ss.mat", {"boxes": Cell(BOXES)}, compressed=False)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match="cut short"):
        read_mat(path, ("boxes",))


def test_a_damaged_compressed_variable_is_a_clean_error(tmp_path):
    path = write_v5(tmp_path / "ss.mat", {"boxes": Cell(BOXES)})
    data = bytearray(path.read_bytes())
    data[140:150] = b"\xff" * 10  # inside the zlib stream
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="damaged compressed"):
        read_mat(path, ("boxes",))


def test_a_compressed_variable_may_not_inflate_past_the_limit(tmp_path, monkeypatch):
    path = write_v5(tmp_path / "ss.mat", {"boxes": Cell([np.arange(4000.0).reshape(-1, 4) + 0.5])})
    monkeypatch.setattr(mat_file, "MAX_INFLATED", 1000)
    with pytest.raises(DataError, match="compressed variable of more than"):
        read_mat(path, ("boxes",))


def test_a_struct_is_refused_naming_the_variable(tmp_path):
    path = write_v5(tmp_path / "ss.mat", {"boxes": np.ones((1, 4))}, compressed=False)
    data = bytearray(path.read_bytes())
    flags = 128 + 8 + 8  # the matrix tag, the flags' tag: the class byte
    assert data[flags] == 6
    data[flags] = 2  # mxSTRUCT_CLASS
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="struct in 'boxes'"):
        read_mat(path, ("boxes",))


@pytest.mark.parametrize("compressed", [True, False], ids=["compressed", "plain"])
def test_damaged_files_are_data_errors_never_crashes(tmp_path, compressed):
    """300 copies of a valid file with a few bytes changed or cut: each reads, or is one DataError."""
    good = write_v5(tmp_path / "good.mat", {"images": Cell(["000001", "000002"]), "boxes": Cell(BOXES[:2])},
                    compressed=compressed).read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "bad.mat"
    for _ in range(300):
        data = bytearray(good)
        for at in rng.integers(128, len(data), size=3):
            data[at] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data[: int(rng.integers(129, len(data) + 1))]))
        try:
            read_mat(path, ("images", "boxes"))
        except DataError:
            pass
