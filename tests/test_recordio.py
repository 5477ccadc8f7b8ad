"""RecordIO: the reference files written by MXNet, byte-exact writing, and damaged files."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fresnet.cli import main as cli_main
from fresnet.data import RecordIODataset, RecordIOWriter
from fresnet.data.decode import encode_jpeg
from fresnet.data.recordio.format import (
    MAGIC,
    MAGIC_BYTES,
    RecFile,
    frame_record,
    pack_record,
    unpack_record,
    write_index,
)
from fresnet.errors import FresnetError

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "recordio"
# Pillow (libjpeg-turbo) vs MXNet's bundled OpenCV: a few grey levels are allowed for decoder
# differences; on the reference files the measured difference is 0.
DECODE_TOLERANCE = 3
DATASETS = [".", "multi"]


@pytest.fixture(scope="module")
def reference() -> Path:
    if not (REFERENCE / "train.rec").is_file():
        pytest.skip("../shared/reference/recordio is not available")
    return REFERENCE


@pytest.fixture(scope="module")
def layout(reference) -> dict:
    return json.loads((reference / "layout.json").read_text())


def _copy_dataset(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("train.rec", "train.idx", "property"):
        shutil.copyfile(src / name, dst / name)
    return dst


def _jpeg(seed: int, size: int = 32) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _write_plain_rec(prefix: Path, records: list[tuple[int, object, bytes]]) -> None:
    """An im2rec-style file: no identity header, records in the given order (key, label, payload)."""
    offset = 0
    with open(f"{prefix}.rec", "wb") as rec, open(f"{prefix}.idx", "w") as idx:
        for key, label, payload in records:
            frame = frame_record(pack_record(label, payload, id=key))
            rec.write(frame)
            idx.write(f"{key}\t{offset}\n")
            offset += len(frame)


# --------------------------------------------------------------------------------------------------
# reading the reference files


@pytest.mark.reference
@pytest.mark.parametrize("name", DATASETS)
def test_reference_images_and_labels_match_face_image_iter(reference, layout, name):
    ds = RecordIODataset(reference / name)
    view = layout[name]
    assert ds.has_identity_header
    assert ds.keys.tolist() == view["face_image_iter"]["imgidx"]
    assert ds.labels.tolist() == [int(v) for v in view["face_image_iter_labels"]]
    assert ds.num_classes == int(view["property"].split(",")[0])
    assert ds.image_size == (112, 112)

    expected = np.load(reference / name / "expected_face_image_iter_batch_uint8.npy")
    images = []
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (3, 112, 112)
        assert isinstance(label, int) and label == ds.labels[i]
        images.append(image.numpy())
    diff = np.abs(np.stack(images).astype(int) - expected)
    assert diff.max() <= DECODE_TOLERANCE
    assert diff.mean() < 0.5


@pytest.mark.reference
@pytest.mark.parametrize("name", DATASETS)
def test_every_reference_record_parses_as_layout_json_says(reference, layout, name):
    rec = RecFile(reference / name / "train.rec")
    offsets = dict(tuple(map(int, line.split("\t"))) for line in layout[name]["idx_file"])
    assert len(offsets) == len(layout[name]["records"])
    for record in layout[name]["records"]:
        payload, end = rec.read(offsets[record["idx"]], "test")
        header, data = unpack_record(payload, "test")
        assert (header.flag, header.id, header.id2) == (record["flag"], record["id"], record["id2"])
        assert np.allclose(header.label, record["label"])
        assert len(data) == record["payload_bytes"]
        if record["payload_sha256"]:
            assert hashlib.sha256(data).hexdigest() == record["payload_sha256"]
        assert end % 4 == 0  # records are 4-byte aligned


@pytest.mark.reference
@pytest.mark.parametrize("name", DATASETS)
def test_writer_output_is_byte_identical_to_rec_builder(reference, tmp_path, name):
    source = RecordIODataset(reference / name)
    with RecordIOWriter(tmp_path / "out" / "train", image_size=(112, 112)) as writer:
        for i in range(len(source)):
            data, label = source.read_raw(i)
            writer.add_image(data, label)
    for filename in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "out" / filename).read_bytes() == (reference / name / filename).read_bytes(), filename
    assert sorted(os.listdir(tmp_path / "out")) == ["property", "train.idx", "train.rec"]  # no temp files left


@pytest.mark.reference
@pytest.mark.parametrize("name", DATASETS)
def test_pack_command_from_list_file_reproduces_reference(reference, layout, tmp_path, name):
    # Recreate the source images (the payloads are the original JPEG files) and label.txt.
    source = RecordIODataset(reference / name)
    lines = []
    for i, item in enumerate(layout[name]["items"]):
        path = tmp_path / "src" / item["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source.read_raw(i)[0])
        lines.append(f"{item['file']}\t{item['label']}\n")
    (tmp_path / "src" / "label.txt").write_text("".join(lines))

    assert cli_main(["pack", str(tmp_path / "src" / "label.txt"), str(tmp_path / "out" / "train")]) == 0
    for filename in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "out" / filename).read_bytes() == (reference / name / filename).read_bytes(), filename


@pytest.mark.reference
def test_pack_command_from_identity_folders(reference, tmp_path):
    source = RecordIODataset(reference / "multi")
    for i in range(len(source)):
        data, label = source.read_raw(i)
        path = tmp_path / "faces" / f"person_{label}" / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert cli_main(["pack", str(tmp_path / "faces"), str(tmp_path / "out") + "/"]) == 0
    packed = RecordIODataset(tmp_path / "out")
    assert packed.labels.tolist() == source.labels.tolist()
    for i in range(len(source)):
        assert torch.equal(packed[i][0], source[i][0])
    assert (tmp_path / "out" / "train.rec").read_bytes() == (reference / "multi" / "train.rec").read_bytes()


@pytest.mark.reference
def test_missing_idx_is_rebuilt_by_scanning_with_a_warning(reference, tmp_path):
    data = _copy_dataset(reference, tmp_path / "d")
    (data / "train.idx").unlink()
    with pytest.warns(UserWarning, match="no index file"):
        ds = RecordIODataset(data)
    assert ds.labels.tolist() == list(range(10))
    assert torch.equal(ds[3][0], RecordIODataset(reference)[3][0])
    # the scan finds the same keys and offsets MXNet wrote, in file order
    write_index(data / "train.rec")
    assert (data / "train.idx").read_bytes() == (reference / "train.idx").read_bytes()


@pytest.mark.reference
def test_dataloader_workers_each_open_their_own_file(reference):
    ds = RecordIODataset(reference / "multi")
    ds[0]  # opens a descriptor in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._rec._fd is None  # descriptors never travel to workers
    loader = DataLoader(ds, batch_size=3, num_workers=2, shuffle=False)
    labels = torch.cat([y for _, y in loader]).tolist()
    assert labels == ds.labels.tolist()


def test_descriptor_is_reopened_after_fork(tmp_path):
    _write_plain_rec(tmp_path / "a", [(0, 1.0, _jpeg(0))])
    rec = RecFile(tmp_path / "a.rec")
    rec.read(0, "first")
    first_fd = rec._fd
    rec._pid = -1  # what a forked worker sees: the descriptor belongs to another process
    rec.read(0, "second")
    assert rec._pid == os.getpid() and rec._fd is not None
    os.close(first_fd)


# --------------------------------------------------------------------------------------------------
# framing and layouts written here


def test_split_records_use_dmlc_continuation_flags(tmp_path):
    # the magic at aligned positions 4 and 12 splits the payload into three chunks; at 19 it does not
    payload = b"abcd" + MAGIC_BYTES + b"efgh" + MAGIC_BYTES + b"ijk" + MAGIC_BYTES + b"zzz"
    frame = frame_record(payload)
    lrec = lambda cflag, length: struct.pack("<II", MAGIC, (cflag << 29) | length)
    expected = lrec(1, 4) + b"abcd" + lrec(2, 4) + b"efgh" + lrec(3, 10) + payload[16:] + b"\0\0"
    assert frame == expected
    (tmp_path / "s.rec").write_bytes(frame + frame_record(b"next"))
    rec = RecFile(tmp_path / "s.rec")
    assert rec.read(0, "test") == (payload, len(frame))
    assert rec.read(len(frame), "test")[0] == b"next"
    with pytest.raises(FresnetError, match="continuation"):
        rec.read(len(lrec(1, 4) + b"abcd"), "record key 7")


def test_split_image_records_round_trip_through_the_dataset(tmp_path):
    image = _jpeg(1)
    # plant the magic at an aligned payload position (IRHeader is 24 bytes, so JPEG offset 40 -> 64)
    image = image[:40] + MAGIC_BYTES + image[44:]
    with RecordIOWriter(tmp_path / "train") as writer:
        writer.add_image(image, 0)
        writer.add_image(_jpeg(2), 1)
    raw = (tmp_path / "train.rec").read_bytes()
    assert (struct.unpack_from("<I", raw, 4)[0] >> 29) == 1
    ds = RecordIODataset(tmp_path / "train")
    assert ds.read_raw(0) == (image, 0)


def test_shuffled_rec_without_identity_header_takes_labels_from_image_headers(tmp_path):
    records = [(3, 2.0, _jpeg(3)), (0, 5.0, _jpeg(0)), (2, [1.0, 0.5], _jpeg(2)), (1, 0.0, _jpeg(1))]
    _write_plain_rec(tmp_path / "train", records)
    ds = RecordIODataset(tmp_path / "train.rec")
    assert not ds.has_identity_header
    assert ds.keys.tolist() == [3, 0, 2, 1]  # .idx order, like FaceImageIter's imgrec.keys
    assert ds.labels.tolist() == [2, 5, 1, 0]  # array label -> label[0]
    assert ds.num_classes == 6 and ds.image_size is None
    assert [ds[i][1] for i in range(4)] == [2, 5, 1, 0]


def test_writer_refuses_out_of_order_labels_and_existing_output(tmp_path):
    with pytest.raises(FresnetError, match="ascending label order"):
        with RecordIOWriter(tmp_path / "train") as writer:
            writer.add_image(_jpeg(0), 1)
            writer.add_image(_jpeg(1), 0)
    assert os.listdir(tmp_path) == []  # the failed write left nothing, not even temp files
    with RecordIOWriter(tmp_path / "train") as writer:
        writer.add_image(_jpeg(0), 0)
    with pytest.raises(FresnetError, match="already exists"):
        RecordIOWriter(tmp_path / "train")
    with RecordIOWriter(tmp_path / "train", overwrite=True) as writer:
        writer.add_image(_jpeg(0), 0)
        writer.add_image(_jpeg(1), 1)
    assert RecordIODataset(tmp_path / "train").labels.tolist() == [0, 1]


def test_a_crash_while_packing_leaves_the_previous_dataset_intact(tmp_path):
    with RecordIOWriter(tmp_path / "train") as writer:
        writer.add_image(_jpeg(0), 0)
    before = {name: (tmp_path / name).read_bytes() for name in ("train.rec", "train.idx", "property")}
    with pytest.raises(RuntimeError):
        with RecordIOWriter(tmp_path / "train", overwrite=True) as writer:
            writer.add_image(_jpeg(1), 0)
            raise RuntimeError("simulated crash")
    after = {name: (tmp_path / name).read_bytes() for name in before}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["property", "train.idx", "train.rec"]


def test_pack_names_a_corrupt_image_and_writes_nothing(tmp_path):
    (tmp_path / "faces" / "a").mkdir(parents=True)
    (tmp_path / "faces" / "a" / "1.jpg").write_bytes(_jpeg(0))
    (tmp_path / "faces" / "a" / "2.jpg").write_bytes(_jpeg(1)[:100])  # truncated JPEG
    assert cli_main(["pack", str(tmp_path / "faces"), str(tmp_path / "out" / "train")]) == 2
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


# --------------------------------------------------------------------------------------------------
# damaged files


@pytest.fixture()
def plain(tmp_path) -> Path:
    """Five image records, no identity header, the last one at the end of the file."""
    _write_plain_rec(tmp_path / "train", [(k, float(k), _jpeg(k)) for k in range(5)])
    return tmp_path


def _offsets(prefix: Path) -> dict[int, int]:
    lines = Path(f"{prefix}.idx").read_text().split()
    return {int(k): int(v) for k, v in zip(lines[0::2], lines[1::2])}


def test_truncated_rec_names_file_record_and_offset(plain):
    rec = plain / "train.rec"
    offsets = _offsets(plain / "train")
    with open(rec, "r+b") as handle:
        handle.truncate(offsets[4] + 100)
    with pytest.raises(
        FresnetError, match=rf"train\.rec: record key 4 at offset {offsets[4]}: .* the \.rec is truncated"
    ):
        RecordIODataset(rec)
    with pytest.warns(UserWarning, match="skipping bad sample"):
        ds = RecordIODataset(rec, on_error="skip")
    assert ds.keys.tolist() == [0, 1, 2, 3] and ds.bad_records == 1


@pytest.mark.reference
def test_truncated_reference_rec_is_reported(reference, tmp_path):
    data = _copy_dataset(reference, tmp_path / "d")
    size = (data / "train.rec").stat().st_size
    with open(data / "train.rec", "r+b") as handle:
        handle.truncate(size - 30)  # an interrupted copy loses record 0, the header, written last
    with pytest.raises(FresnetError, match=r"train\.rec: record key 0 at offset 74252: .*truncated"):
        RecordIODataset(data)


def test_bad_magic_names_the_offset(plain):
    offsets = _offsets(plain / "train")
    with open(plain / "train.rec", "r+b") as handle:
        handle.seek(offsets[2])
        handle.write(b"\xde\xad\xbe\xef")
    with pytest.warns(UserWarning, match="bad magic"):  # labels come from headers: skip mode drops it
        ds = RecordIODataset(plain / "train", on_error="skip")
    assert ds.bad_records == 1 and ds.keys.tolist() == [0, 1, 3, 4]
    with pytest.raises(FresnetError, match=rf"train\.rec: record key 2 at offset {offsets[2]}: bad magic 0xefbeadde"):
        RecordIODataset(plain / "train")


def test_idx_pointing_past_the_end_names_the_index_line(plain):
    idx = plain / "train.idx"
    idx.write_text(idx.read_text() + "5\t999999\n")
    with pytest.raises(FresnetError, match=r"train\.idx: line 6: record key 5 points at offset 999999, past the end"):
        RecordIODataset(plain / "train")
    with pytest.warns(UserWarning, match="past the end"):
        ds = RecordIODataset(plain / "train", on_error="skip")
    assert len(ds) == 5 and ds.bad_records == 1


def test_corrupt_jpeg_raises_or_is_skipped_and_counted_across_workers(tmp_path):
    payloads = [_jpeg(k) for k in range(6)]
    payloads[1] = b"\0" * 50 + payloads[1][50:]  # destroys the JPEG header, same length
    payloads[4] = b"not a jpeg at all"
    with RecordIOWriter(tmp_path / "train", image_size=(32, 32)) as writer:
        for k, payload in enumerate(payloads):
            writer.add_image(payload, k // 2)
    with pytest.raises(FresnetError, match=r"train\.rec: record key 2 at offset \d+: cannot decode"):
        RecordIODataset(tmp_path)[1]

    ds = RecordIODataset(tmp_path, on_error="skip")
    with pytest.warns(UserWarning, match="skipping bad sample"):
        image, label = ds[1]
    assert torch.equal(image, RecordIODataset(tmp_path)[2][0]) and label == 1  # the next good sample
    ds = RecordIODataset(tmp_path, on_error="skip")
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    batches = [x for x, _ in loader]  # (the workers' warnings stay in the workers)
    assert sum(len(x) for x in batches) == 6  # batch sizes are kept
    assert ds.bad_records == 2  # counted in the workers, visible here


def test_property_that_contradicts_the_labels_is_reported(plain):
    (plain / "property").write_text("3,32,32\n")
    with pytest.raises(FresnetError, match="property: says 3 classes but the records use label 4"):
        RecordIODataset(plain / "train")
    (plain / "property").write_text("garbage")
    with pytest.raises(FresnetError, match="num_classes,height,width"):
        RecordIODataset(plain / "train")


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(FresnetError, match="on_error must be one of"):
        RecordIODataset(tmp_path, on_error="ignore")
    with pytest.raises(FresnetError, match="no such RecordIO file"):
        RecordIODataset(tmp_path / "nothing.rec")


def test_a_second_dataset_in_a_folder_may_not_rewrite_the_first_ones_property(tmp_path):
    """Issue 24 item 9: InsightFace's format keeps one `property` per folder; packing `small` next to
    `mydata.rec` rewrote it and mydata no longer opened. Refused, with --overwrite too."""
    with RecordIOWriter(tmp_path / "mydata") as writer:
        for label in range(3):
            writer.add_image(_jpeg(label), label)
    before = (tmp_path / "property").read_bytes()
    for overwrite in (False, True):
        with pytest.raises(FresnetError, match=r"property.*mydata.rec.*own folder"):
            RecordIOWriter(tmp_path / "small", overwrite=overwrite)
    assert (tmp_path / "property").read_bytes() == before
    assert RecordIODataset(tmp_path / "mydata").num_classes == 3
    assert not (tmp_path / "small.rec").exists()
    # a property left without any dataset is not silently replaced either
    (tmp_path / "mydata.rec").unlink()
    (tmp_path / "mydata.idx").unlink()
    with pytest.raises(FresnetError, match="property already exists"):
        RecordIOWriter(tmp_path / "small")
    with RecordIOWriter(tmp_path / "small", overwrite=True) as writer:
        writer.add_image(_jpeg(0), 0)
