"""MXNet .params reader/writer: layouts, dtypes, names, errors with file and byte offset."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from fresnet.errors import FresnetError
from fresnet.interop.mxnet_params import (
    LIST_MAGIC,
    V1_MAGIC,
    V2_MAGIC,
    encode_ndarray_list,
    read_ndarray_list,
    read_params,
    split_arg_aux,
    write_params,
)


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "arg:conv0_weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "arg:fc1_gamma": rng.standard_normal(5).astype(np.float16),
        "aux:bn0_moving_var": rng.random(4).astype(np.float64),
        "arg:counts": np.arange(6, dtype=np.int32).reshape(2, 3),
        "arg:bytes": np.arange(3, dtype=np.uint8),
    }


@pytest.mark.parametrize("layout", ["v2", "v1", "v0"])
def test_round_trip_every_layout_keeps_values_dtypes_and_order(tmp_path, layout):
    arrays = _arrays()
    path = tmp_path / "x.params"
    write_params(path, arrays, layout=layout)
    back = read_params(path)
    assert list(back) == list(arrays)
    for name, value in arrays.items():
        assert back[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value)


def test_v2_layout_is_the_documented_byte_format():
    data = encode_ndarray_list({"arg:w": np.array([[1.5, -2.0]], dtype=np.float32)})
    expected = struct.pack("<QQQ", LIST_MAGIC, 0, 1)
    expected += struct.pack("<Ii", V2_MAGIC, 0)  # magic, dense storage
    expected += struct.pack("<iqq", 2, 1, 2)  # ndim, int64 dims
    expected += struct.pack("<iii", 1, 0, 0)  # cpu(0), float32
    expected += struct.pack("<2f", 1.5, -2.0)
    expected += struct.pack("<QQ", 1, 5) + b"arg:w"
    assert data == expected


def test_reads_a_handmade_oldest_legacy_array():
    # pre-v1 MXNet: no magic, uint32 ndim + uint32 dims; float64 (type flag 1); unnamed list
    raw = struct.pack("<QQQ", LIST_MAGIC, 0, 1) + struct.pack("<III", 2, 2, 1) + struct.pack("<iii", 1, 0, 1)
    raw += struct.pack("<2d", 0.25, 4.0) + struct.pack("<Q", 0)
    arrays, names = _read_bytes(raw)
    assert names == []
    assert arrays[0].dtype == np.float64 and arrays[0].shape == (2, 1)
    np.testing.assert_array_equal(arrays[0].ravel(), [0.25, 4.0])


def test_reads_a_handmade_v1_float16_array():
    raw = struct.pack("<QQQ", LIST_MAGIC, 0, 1) + struct.pack("<Iiq", V1_MAGIC, 1, 3) + struct.pack("<iii", 2, 0, 2)
    raw += np.array([1, 2, 3], dtype="<f2").tobytes() + struct.pack("<QQ", 1, 3) + b"abc"
    arrays, names = _read_bytes(raw)
    assert names == ["abc"] and arrays[0].dtype == np.float16
    np.testing.assert_array_equal(arrays[0], [1, 2, 3])


_TMP = {}


def _read_bytes(raw: bytes, name="hand.params"):
    path = _TMP["dir"] / name
    path.write_bytes(raw)
    return read_ndarray_list(path)


@pytest.fixture(autouse=True)
def _tmp_dir(tmp_path):
    _TMP["dir"] = tmp_path


def test_unnamed_list_round_trip(tmp_path):
    path = tmp_path / "list.params"
    write_params(path, [np.ones(2, np.float32), np.zeros((1, 2), np.float64)])
    arrays, names = read_ndarray_list(path)
    assert names == [] and [a.shape for a in arrays] == [(2,), (1, 2)]
    assert list(read_params(path)) == ["0", "1"]


def test_truncation_anywhere_names_file_and_offset(tmp_path):
    full = encode_ndarray_list(_arrays())
    for cut in (3, 20, 30, 60, len(full) // 2, len(full) - 3):
        path = tmp_path / f"cut{cut}.params"
        path.write_bytes(full[:cut])
        with pytest.raises(FresnetError) as info:
            read_params(path)
        message = str(info.value)
        assert str(path) in message and "byte offset" in message and "truncated" in message, cut


def test_truncated_data_reports_where_the_array_starts(tmp_path):
    raw = encode_ndarray_list({"arg:w": np.zeros(100, np.float32)})
    path = tmp_path / "short.params"
    path.write_bytes(raw[:200])
    header = 24 + 8 + 4 + 8 + 12  # list header, v2 magic+stype, ndim+dim, ctx+dtype
    with pytest.raises(FresnetError, match=f"byte offset {header}: array 0 of 1 with shape \\(100,\\)"):
        read_params(path)


def test_corrupt_headers_are_refused_with_offsets(tmp_path):
    good = encode_ndarray_list({"arg:w": np.zeros(2, np.float32)})
    cases = {
        "bad file magic": (struct.pack("<Q", 0x113) + good[8:], "byte offset 0"),
        "bad array magic": (good[:24] + struct.pack("<I", 0xDEADBEEF) + good[28:], "byte offset 24"),
        "sparse": (good[:28] + struct.pack("<i", 1) + good[32:], "sparse \\(row_sparse\\)"),
        "bad dtype": (good[:52] + struct.pack("<i", 99) + good[56:], "type flag 99"),
        "trailing": (good + b"xx", "trailing bytes"),
    }
    for label, (raw, pattern) in cases.items():
        path = tmp_path / f"{label}.params"
        path.write_bytes(raw)
        with pytest.raises(FresnetError, match=pattern) as info:
            read_params(path)
        assert str(path) in str(info.value), label


def test_name_count_must_match(tmp_path):
    raw = encode_ndarray_list([np.zeros(1, np.float32)])[:-8] + struct.pack("<Q", 2)
    path = tmp_path / "names.params"
    path.write_bytes(raw)
    with pytest.raises(FresnetError, match="2 names for 1 arrays"):
        read_params(path)


def test_missing_file_is_a_fresnet_error(tmp_path):
    with pytest.raises(FresnetError, match="no such file"):
        read_params(tmp_path / "nope.params")


def test_unsupported_dtype_leaves_existing_file_untouched(tmp_path):
    path = tmp_path / "keep.params"
    write_params(path, {"arg:a": np.ones(2, np.float32)})
    before = path.read_bytes()
    with pytest.raises(FresnetError, match="complex"):
        write_params(path, {"arg:a": np.ones(2, np.complex64)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["keep.params"]


def test_split_arg_aux_like_load_checkpoint():
    arg, aux = split_arg_aux({"arg:w": 1, "aux:m": 2, "bn_moving_var": 3, "fc_weight": 4})
    assert arg == {"w": 1, "fc_weight": 4} and aux == {"m": 2, "bn_moving_var": 3}
    with pytest.raises(FresnetError, match="'foo:x'"):
        split_arg_aux({"foo:x": 1})


def test_real_checkpoint_reencodes_byte_for_byte(mxnet_fixture):
    path = mxnet_fixture("fx07_bottleneck_unit3_u1111") / "model-0000.params"
    arrays, names = read_ndarray_list(path)
    assert names[0] == "arg:conv0_weight" and arrays[0].shape == (64, 3, 3, 3)
    assert all(a.dtype == np.float32 for a in arrays)
    assert sum(n.startswith("aux:") for n in names) > 0
    assert encode_ndarray_list(dict(zip(names, arrays))) == path.read_bytes()
