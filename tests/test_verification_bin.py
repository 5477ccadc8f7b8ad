"""Verification packs: the reference .bin, every pickle flavour, and pickles that try to run code."""
from __future__ import annotations

import builtins
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fresnet.cli import main as cli_main
from fresnet.data import load_bin, save_bin
from fresnet.data.decode import encode_jpeg
from fresnet.data.verification_bin import read_bin, read_pairs_list
from fresnet.errors import FresnetError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "recordio"
DECODE_TOLERANCE = 3  # grey levels, Pillow vs MXNet's OpenCV decode (measured: 0)


@pytest.fixture(scope="module")
def reference() -> Path:
    if not (REFERENCE / "small_lfw.bin").is_file():
        pytest.skip("../shared/reference/recordio is not available")
    return REFERENCE


def _faces(n: int, size: int = 24, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 1, 1, 3))
    smooth = np.linspace(0, 60, size)[None, :, None, None] + np.linspace(0, 60, size)[None, None, :, None]
    return np.clip(base + smooth, 0, 255).astype(np.uint8)


def _py2_protocol2(bins: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2's ``pickle.dump((bins, issame), f, protocol=2)`` writes for str entries."""
    out = [b"\x80\x02", b"]", b"("]
    for data in bins:
        out.append(b"U" + bytes([len(data)]) + data if len(data) < 256 else b"T" + struct.pack("<i", len(data)) + data)
    out += [b"e", b"]", b"("] + [b"\x88" if flag else b"\x89" for flag in issame] + [b"e", b"\x86", b"."]
    return b"".join(out)


def _py2_protocol0(bins: list[bytes], issame: list[bool]) -> bytes:
    """Python 2's default text protocol: STRING opcodes holding repr() of each str."""
    out = [b"((l"]
    for data in bins:
        out.append(b"S" + repr(data)[1:].encode("ascii") + b"\na")
    out.append(b"(l")
    out += [b"I0" + (b"1" if flag else b"0") + b"\na" for flag in issame]
    out.append(b"t.")
    return b"".join(out)


# --------------------------------------------------------------------------------------------------
# the reference pack and the flavours of the format


@pytest.mark.reference
def test_reference_small_lfw_matches_mxnet_decode(reference):
    images, issame = load_bin(reference / "small_lfw.bin")
    expected = np.load(reference / "small_lfw_decoded_rgb_uint8.npy")
    assert images.dtype == np.uint8 and images.shape == (20, 112, 112, 3)
    assert issame == [True] * 10 and all(type(v) is bool for v in issame)
    diff = np.abs(images.astype(int) - expected)
    assert diff.max() <= DECODE_TOLERANCE and diff.mean() < 0.5


@pytest.mark.reference
@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("as_arrays", [True, False])
def test_every_pickle_protocol_with_bytes_or_arrays(reference, tmp_path, protocol, as_arrays):
    encoded, issame = read_bin(reference / "small_lfw.bin")
    entries = [np.frombuffer(b, np.uint8).reshape(-1, 1).copy() for b in encoded] if as_arrays else encoded
    flags = [np.bool_(v) for v in issame] if as_arrays else issame  # numpy scalars appear in some packs
    (tmp_path / "p.bin").write_bytes(pickle.dumps((entries, flags), protocol=protocol))
    images, loaded_issame = load_bin(tmp_path / "p.bin")
    assert np.array_equal(images, load_bin(reference / "small_lfw.bin")[0])
    assert loaded_issame == issame


@pytest.mark.parametrize("writer", [_py2_protocol2, _py2_protocol0])
def test_python2_packs_with_str_entries(tmp_path, writer):
    faces = _faces(4)
    bins = [encode_jpeg(face) for face in faces]
    (tmp_path / "py2.bin").write_bytes(writer(bins, [True, False]))
    assert read_bin(tmp_path / "py2.bin") == (bins, [True, False])
    images, issame = load_bin(tmp_path / "py2.bin")
    assert images.shape == (4, 24, 24, 3) and issame == [True, False]


def test_save_then_load_round_trip(tmp_path):
    faces = _faces(6)
    path = save_bin(tmp_path / "out" / "v.bin", faces, [True, False, True])
    images, issame = load_bin(path)
    assert issame == [True, False, True]
    assert np.abs(images.astype(int) - faces).mean() < 2.0  # JPEG quality 95
    encoded = [encode_jpeg(face) for face in faces]
    save_bin(tmp_path / "b.bin", encoded, [1, 0, 1])
    assert read_bin(tmp_path / "b.bin") == (encoded, [True, False, True])  # bytes are stored as given
    with open(tmp_path / "b.bin", "rb") as handle:  # and the file is what InsightFace's load_bin reads
        bins, flags = pickle.load(handle, encoding="bytes")
    assert bins == encoded and flags == [True, False, True]


def test_images_of_different_sizes_need_image_size(tmp_path):
    bins = [encode_jpeg(_faces(1, 24)[0]), encode_jpeg(_faces(1, 32)[0])]
    save_bin(tmp_path / "m.bin", bins, [True])
    with pytest.raises(FresnetError, match=r"m\.bin: image 1 is 32x32 but image 0 is 24x24; pass image_size"):
        load_bin(tmp_path / "m.bin")
    images, _ = load_bin(tmp_path / "m.bin", image_size=(28, 28))
    assert images.shape == (2, 28, 28, 3)


# --------------------------------------------------------------------------------------------------
# pickles that would run code


class _RunsShell:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _OpensFile:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))  # opening for writing creates the file


@pytest.mark.parametrize("payload", [_RunsShell, _OpensFile])
def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "PWNED"
    # hidden among valid entries, as a crafted pack would hide it
    content = ([encode_jpeg(_faces(1)[0]), payload(marker)], [True])
    evil = tmp_path / "evil.bin"
    evil.write_bytes(pickle.dumps(content, protocol=2))
    assert not marker.exists()
    with pytest.raises(
        FresnetError,
        match=r"evil\.bin: refused to load: the pickle asks for '(posix|nt|os|builtins|io)\.(system|open)'",
    ):
        load_bin(evil)
    assert not marker.exists()  # nothing ran


def test_refusal_message_via_the_loader_is_actionable(tmp_path):
    marker = tmp_path / "PWNED"
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([_RunsShell(marker), b"x"], [True])))
    with pytest.raises(FresnetError) as info:
        load_bin(tmp_path / "evil.bin")
    message = str(info.value)
    assert "do not open it with pickle" in message and "Nothing from it was executed" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, match",
    [
        (([np.array([1, None], dtype=object), b"x"], [True]), "not a plain numeric type"),
        (([np.ma.masked_array([1, 2]), b"x"], [True]), r"asks for 'numpy\.ma\.core\._mareconstruct'"),
    ],
)
def test_numpy_objects_beyond_plain_arrays_are_refused(tmp_path, content, match):
    (tmp_path / "n.bin").write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(FresnetError, match=match):
        load_bin(tmp_path / "n.bin")


def test_codecs_encode_is_allowed_only_for_latin1_bytes(tmp_path):
    # protocol 2 from Python 3 writes bytes as _codecs.encode(str, 'latin1'); anything else is refused
    good = pickle.dumps(([b"\xff\xd8", b"ab"], [True]), protocol=2)
    assert b"_codecs" in good
    assert read_bin_bytes(tmp_path, good) == ([b"\xff\xd8", b"ab"], [True])
    bad = good.replace(b"latin1", b"rot13_")
    with pytest.raises(FresnetError, match="latin1 bytes trick"):
        read_bin_bytes(tmp_path, bad)


def read_bin_bytes(tmp_path: Path, data: bytes):
    (tmp_path / "x.bin").write_bytes(data)
    return read_bin(tmp_path / "x.bin")


# --------------------------------------------------------------------------------------------------
# unexpected content


@pytest.mark.parametrize(
    "data, match",
    [
        (pickle.dumps({"bins": [], "issame": []}), "holds a dict, expected a pair"),
        (pickle.dumps(([b"a", b"b", b"c"], [True])), "3 images for 1 pairs"),
        (pickle.dumps(([1, 2], [True])), "image entry 0 is a int"),
        (pickle.dumps(([np.zeros(3, np.float32), b"b"], [True])), "image entry 0 is a ndarray of dtype float32"),
        (pickle.dumps(([b"a", b"b"], ["yes"])), "issame entry 0 is 'yes'"),
        (pickle.dumps(([b"a", b"b"], [True]))[:-5], "not a readable InsightFace verification pack"),
        (b"\xff\xd8\xff\xe0 a JPEG, not a pickle", "not a readable InsightFace verification pack"),
        (b"", "not a readable InsightFace verification pack"),
    ],
)
def test_unexpected_content_is_reported_with_the_file_name(tmp_path, data, match):
    (tmp_path / "odd.bin").write_bytes(data)
    with pytest.raises(FresnetError, match=r"odd\.bin: .*" + match):
        load_bin(tmp_path / "odd.bin")


def test_a_corrupt_jpeg_names_the_image_and_pair(tmp_path):
    bins = [encode_jpeg(face) for face in _faces(4)]
    bins[3] = b"\xff\xd8\xff" + b"\0" * 40
    with pytest.raises(FresnetError, match=r"c\.bin: image 3: cannot decode"):  # the writer refuses it...
        save_bin(tmp_path / "c.bin", bins, [True, False])
    assert not (tmp_path / "c.bin").exists()
    save_bin(tmp_path / "c.bin", bins, [True, False], verify=False)  # ...unless told not to look
    with pytest.raises(FresnetError, match=r"c\.bin: image 3 \(pair 1\): cannot decode"):
        load_bin(tmp_path / "c.bin")


def test_missing_file_is_a_fresnet_error(tmp_path):
    with pytest.raises(FresnetError, match=r"nothing\.bin: cannot read"):
        load_bin(tmp_path / "nothing.bin")


# --------------------------------------------------------------------------------------------------
# building packs from pairs


def _write_images(root: Path, names: list[str]) -> None:
    for k, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encode_jpeg(_faces(1, seed=k)[0]))


def test_make_bin_command_from_a_simple_pairs_list(tmp_path):
    _write_images(tmp_path, ["a/1.jpg", "a/2.jpg", "b/1.jpg"])
    (tmp_path / "pairs.txt").write_text("a/1.jpg\ta/2.jpg\t1\n# comment\na/1.jpg b/1.jpg false\n")
    assert cli_main(["make-bin", str(tmp_path / "pairs.txt"), str(tmp_path / "out.bin")]) == 0
    encoded, issame = read_bin(tmp_path / "out.bin")
    assert issame == [True, False]
    assert encoded[0] == (tmp_path / "a/1.jpg").read_bytes() and encoded[3] == (tmp_path / "b/1.jpg").read_bytes()
    # the one overwrite rule: an existing output is refused unless --overwrite
    before = (tmp_path / "out.bin").read_bytes()
    assert cli_main(["make-bin", str(tmp_path / "pairs.txt"), str(tmp_path / "out.bin")]) == 2
    assert (tmp_path / "out.bin").read_bytes() == before
    assert cli_main(["make-bin", str(tmp_path / "pairs.txt"), str(tmp_path / "out.bin"), "--overwrite"]) == 0


def test_lfw_pairs_format(tmp_path):
    _write_images(tmp_path / "lfw", ["Ann/Ann_0001.jpg", "Ann/Ann_0002.jpg", "Bob/Bob_0001.jpg"])
    (tmp_path / "pairs.txt").write_text("1\t1\nAnn\t1\t2\nAnn\t1\tBob\t1\n")
    pairs = read_pairs_list(tmp_path / "pairs.txt", root=tmp_path / "lfw")
    assert [(a.name, b.name, same) for a, b, same in pairs] == [
        ("Ann_0001.jpg", "Ann_0002.jpg", True),
        ("Ann_0001.jpg", "Bob_0001.jpg", False),
    ]


def test_pairs_list_errors_name_the_line(tmp_path):
    _write_images(tmp_path, ["a.jpg"])
    (tmp_path / "p.txt").write_text("a.jpg a.jpg 1\na.jpg missing.jpg 0\n")
    with pytest.raises(FresnetError, match=r"p\.txt: line 2: image .*missing\.jpg does not exist"):
        read_pairs_list(tmp_path / "p.txt")
    (tmp_path / "q.txt").write_text("a.jpg a.jpg maybe\n")
    with pytest.raises(FresnetError, match=r"q\.txt: line 1 is .*expected 'path1 path2 issame'"):
        read_pairs_list(tmp_path / "q.txt")
    assert cli_main(["make-bin", str(tmp_path / "q.txt"), str(tmp_path / "o.bin")]) == 2
    assert not (tmp_path / "o.bin").exists()
