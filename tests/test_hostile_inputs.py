"""Hostile and broken inputs, one test per class of the hardening issue (sizes trusted before they are
checked, unvalidated values, filesystem faults, silently accepted invalid data, argument parsing),
surface by surface. Each input here was crafted to crash, hang, exhaust memory or be silently
misread before the fix; now each is a FresnetError (or an OSError naming its path) raised before
anything large is allocated. ``test_fuzz.py`` adds property-based and mutation fuzzing."""
from __future__ import annotations

import errno
import io
import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import fresnet
import fresnet.train
from fresnet.cli import main as cli_main
from fresnet.data import RecordIODataset, RecordIOWriter, load_bin, save_bin
from fresnet.errors import FresnetError
from hostile_fixtures import (
    index_of,
    jpeg,
    png_bytes,
    rewrite_records,
    tiny_model,
    write_recordio,
    write_safetensors,
)

GiB = 1 << 30


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory):
    return write_recordio(tmp_path_factory.mktemp("rec"))


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def recordio_copy_without(rec_dir: Path, bad: Path, missing: str) -> Path:
    """A copy of the RecordIO set ``rec_dir`` in ``bad`` with every file but ``missing``, which the test writes."""
    bad.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        if name != missing:
            (bad / name).write_bytes((rec_dir / name).read_bytes())
    return bad


# ---------------------------------------------------------------------------------------------------
# .bin verification packs


def test_bin_entries_repeating_one_image_are_refused_before_decoding(tmp_path):
    # class 1: the pickle memo lets 40000 entries name one JPEG; decoded that was gigabytes
    face = jpeg(0, 112)
    path = tmp_path / "memo.bin"
    path.write_bytes(pickle.dumps(([face] * 40000, [True, False] * 10000), protocol=4))
    assert path.stat().st_size < 200_000
    with pytest.raises(FresnetError, match=r"memo\.bin: the pack names 40000 images holding .* but the file has only"):
        load_bin(path, image_size=(32, 32))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, before our refusal
def test_bin_images_declaring_huge_dimensions_are_refused_before_decoding(tmp_path):
    # class 1: a 2 MB PNG that decodes to 13000 x 13000 pixels (500 MB, each)
    big = png_bytes(13000, 13000, level=1)
    path = tmp_path / "huge.bin"
    path.write_bytes(pickle.dumps(([big, big + b"\0"], [True]), protocol=4))
    with pytest.raises(FresnetError, match=r"huge\.bin: image 0 \(pair 0\): decoding a 13000x13000 image needs "
                                           r"169,000,000, above the limit max_image_pixels=89,478,485"):
        load_bin(path)


def test_bin_of_compressed_images_is_refused_by_pixels_per_byte(tmp_path):
    # class 1: every image within the per-image cap, but 4000x4000 pixels from a few KB each
    images = [png_bytes(4000, 4000) + bytes([i]) for i in range(2)]
    path = tmp_path / "dense.bin"
    path.write_bytes(pickle.dumps((images, [True]), protocol=4))
    with pytest.raises(FresnetError, match="max_pixels_per_byte"):
        load_bin(path)
    with fresnet.limits.override(max_pixels_per_byte=10**6):  # a trusted file: raise the limit
        images, issame = load_bin(path, image_size=(8, 8))
    assert images.shape == (2, 8, 8, 3) and issame == [True]


def test_bin_array_placeholder_with_a_declared_shape_is_refused(tmp_path):
    # class 1: numpy's _reconstruct asked to allocate a declared shape up front
    data = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            b"J\x00\x00\x00@\x85C\x01b\x87R.")
    path = tmp_path / "alloc.bin"
    path.write_bytes(data)
    with pytest.raises(FresnetError, match="placeholder shape"):
        load_bin(path)


@pytest.mark.parametrize("value", ["deep", "huge-int"])
def test_bin_hostile_flag_values_give_a_short_error(tmp_path, value):
    # class 2: printing the bad value itself used to raise RecursionError / ValueError
    outer = pickle.dumps(([jpeg(), jpeg(1)], ["PLACEHOLDER"]), protocol=2)
    if value == "deep":
        payload = b"]" * 50000 + b"a" * 49999
    else:
        payload = b"\x8a" + struct.pack("<B", 255) + b"\x7f" * 255  # LONG1 of 255 bytes
    data = outer.replace(b"X\x0b\x00\x00\x00PLACEHOLDER", payload)
    path = tmp_path / "flags.bin"
    path.write_bytes(data)
    with pytest.raises(FresnetError, match=r"flags\.bin: issame entry 0 is .{1,120}; expected a bool"):
        load_bin(path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_bin_that_is_not_a_regular_file_is_refused_up_front(tmp_path, kind):
    # class 3: a FIFO blocked forever, /dev/zero read until memory ran out
    path = tmp_path / "pack.bin"
    if kind == "fifo":
        fifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    with pytest.raises(FresnetError, match=r"pack\.bin: .*(FIFO|character device|directory)"):
        load_bin(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_save_bin_refuses_what_load_bin_refuses(tmp_path):
    # class 4: the writer no longer produces packs its reader cannot open
    with pytest.raises(FresnetError, match="cannot decode"):
        save_bin(tmp_path / "a.bin", [jpeg(), b"not an image"], [True])
    with pytest.raises(FresnetError, match="max_image_pixels"):
        save_bin(tmp_path / "b.bin", [jpeg(), png_bytes(13000, 13000, level=1)], [True])
    with pytest.raises(FresnetError, match="expected a bool"):
        save_bin(tmp_path / "c.bin", [jpeg(), jpeg(1)], [float("nan")])
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------
# RecordIO


@pytest.mark.parametrize("header,match", [
    ([13.0, float(1 << 20)], "names 1,048,563 identities .* the index holds only"),  # class 1: walked key by key
    ([13.0, float(1 << 40)], "not a range"),
    ([13.0, 1e30], "not a range"),
    ([float("nan"), 20.0], "not a range"),  # class 2: int(nan) was a ValueError
    ([13.0, float("inf")], "not a range"),  # class 2: OverflowError
    ([20.0, 13.0], "reversed"),
])
def test_recordio_header_ranges_are_checked_before_they_are_walked(rec_dir, tmp_path, header, match):
    bad = rewrite_records(rec_dir, tmp_path / "bad", header=header)
    with pytest.raises(FresnetError, match=match):
        RecordIODataset(bad)


@pytest.mark.parametrize("identity,match", [
    ([1.0, float(1 << 40)], "not a range"),  # class 1: np.arange of 2**40 keys
    ([1.0, float(1 << 20)], "outside the image records"),
    ([1.0, 5.0], "share image keys"),  # class 4: two identities claimed images 4 and 5
    ([float("nan"), 3.0], "not a range"),
])
def test_recordio_identity_ranges_are_checked_against_the_index(rec_dir, tmp_path, identity, match):
    bad = rewrite_records(rec_dir, tmp_path / "bad", identity=identity)
    with pytest.raises(FresnetError, match=match):
        RecordIODataset(bad)


@pytest.mark.parametrize("label", [float("nan"), float("inf"), 1e30, -3.0, 0.5])
def test_recordio_image_labels_must_be_small_whole_numbers(rec_dir, tmp_path, label):
    # class 2: 1e30 overflowed int64 in np.full (OverflowError); the others guard what already held
    bad = rewrite_records(rec_dir, tmp_path / "bad", image_label=label)
    with pytest.raises(FresnetError, match=r"record key 1: label .* (not a non-negative integer|above the limit)"):
        RecordIODataset(bad)


def test_recordio_index_pointing_many_keys_at_one_record_is_refused(rec_dir, tmp_path):
    # class 4: 13 copies of one image were served as 13 samples
    bad = recordio_copy_without(rec_dir, tmp_path / "bad", "train.idx")
    first = index_of(rec_dir)[1]
    (bad / "train.idx").write_text("".join(f"{k}\t{first}\n" for k in range(1, 14)))
    with pytest.raises(FresnetError, match=r"train\.idx: line 2: record key 2 points at offset \d+, like line 1"):
        RecordIODataset(bad)
    with pytest.warns(UserWarning):
        ds = RecordIODataset(bad, on_error="skip")
    assert len(ds) == 1 and ds.bad_records == 12


def test_recordio_index_listing_a_key_twice_is_refused(rec_dir, tmp_path):
    bad = recordio_copy_without(rec_dir, tmp_path / "bad", "train.idx")
    offsets = index_of(rec_dir)
    (bad / "train.idx").write_text((rec_dir / "train.idx").read_text() + f"1\t{offsets[2]}\n")
    with pytest.raises(FresnetError, match="record key 1 is listed twice"):
        RecordIODataset(bad)


@pytest.mark.parametrize("text,match", [
    ("-4,-24,-24", "num_classes = '-4'"),  # class 4: negative sizes were accepted
    ("0,24,24", "num_classes = '0'"),
    ("4,24,0", "width = '0'"),
    ("1e30,112,112", "num_classes = '1e30'"),
])
def test_recordio_property_values_are_validated(rec_dir, tmp_path, text, match):
    bad = recordio_copy_without(rec_dir, tmp_path / "bad", "property")
    (bad / "property").write_text(text)
    with pytest.raises(FresnetError, match=rf"property: {match}"):
        RecordIODataset(bad)


@pytest.mark.parametrize("name", ["train.rec", "train.idx", "property"])
def test_recordio_files_that_are_not_regular_are_refused(rec_dir, tmp_path, name):
    # class 3: a FIFO .idx blocked; /dev/zero as property was read until memory ran out
    bad = recordio_copy_without(rec_dir, tmp_path / "bad", name)
    if name == "property":
        (bad / name).symlink_to("/dev/zero")
    else:
        fifo(bad / name)
    with pytest.raises(FresnetError, match=rf"{name.replace('.', '[.]')}: is a (FIFO|character device)"):
        RecordIODataset(bad)


def test_recordio_index_longer_than_the_rec_can_hold_is_refused(rec_dir, tmp_path):
    # class 1: every line of a 300k-line index was kept before any check
    bad = recordio_copy_without(rec_dir, tmp_path / "bad", "train.idx")
    (bad / "train.idx").write_text("".join(f"{k}\t{4 * k}\n" for k in range(300000)))
    with pytest.raises(FresnetError, match=r"train\.idx: .*more than the .* can take"):
        RecordIODataset(bad)
    too_many = (bad / "train.rec").stat().st_size // 32 + 1  # a record takes 32 bytes at least
    (bad / "train.idx").write_text("".join(f"{k}\t0\n" for k in range(too_many)))  # short lines, too many
    with pytest.raises(FresnetError, match=rf"train\.idx: {too_many:,} entries, more than the \d+ records"):
        RecordIODataset(bad)


def test_recordio_records_over_the_limit_are_refused(rec_dir):
    with fresnet.limits.override(max_record_bytes=64):
        with pytest.raises(FresnetError, match="max_record_bytes"):
            ds = RecordIODataset(rec_dir)
            ds[0]


def test_recordio_writer_refuses_what_the_reader_refuses(tmp_path):
    # class 4: `pack` wrote a 1e30 label and negative image sizes its own reader could not open
    with pytest.raises(FresnetError, match="image_size"):
        RecordIOWriter(tmp_path / "a", image_size=(-5, -5))
    with RecordIOWriter(tmp_path / "b", image_size=(24, 24)) as writer:
        with pytest.raises(FresnetError, match=r"label = 1000000000000000000000000000000: expected an integer in "
                                               r"\[0, 16,777,215\]"):
            writer.add_image(jpeg(), 10**30)
        with pytest.raises(FresnetError, match="label"):
            writer.add_image(jpeg(), 1 << 24)
        writer.add_image(jpeg(), 0)
    assert len(RecordIODataset(tmp_path / "b")) == 1


def test_pack_command_refuses_huge_labels(tmp_path, capsys):
    image = tmp_path / "a.jpg"
    image.write_bytes(jpeg())
    (tmp_path / "list.lst").write_text(f"{image}\t1e30\n")
    assert cli_main(["pack", str(tmp_path / "list.lst"), str(tmp_path / "out")]) == 2
    assert "label" in capsys.readouterr().err
    assert not (tmp_path / "out.rec").exists()


# ---------------------------------------------------------------------------------------------------
# MXNet


def _mxnet(tmp_path, model, edit=None, params=None):
    prefix = tmp_path / "m" / "model"
    fresnet.save_mxnet(model, prefix)
    if edit is not None:
        path = Path(f"{prefix}-symbol.json")
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    if params is not None:
        Path(f"{prefix}-0000.params").write_bytes(params)
    return prefix


def _set(name, key, value):
    def edit(data):
        for node in data["nodes"]:
            if node["name"] == name:
                node.setdefault("attrs", {})[key] = value
    return edit


def test_mxnet_params_dimensions_multiply_without_overflow(tmp_path, model):
    # class 1: np.prod(int64) wrapped (2**32 * 2**32 * 4 -> 0) past the size check
    out = io.BytesIO()
    out.write(struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Ii", 0xF993FAC9, 0))
    out.write(struct.pack("<i3q", 3, 1 << 32, 1 << 32, 4) + struct.pack("<iii", 1, 0, 0) + b"\0" * 64)
    prefix = _mxnet(tmp_path, model, params=out.getvalue())
    with pytest.raises(FresnetError, match="max_tensor_bytes"):
        fresnet.load_mxnet(prefix)


@pytest.mark.parametrize("edit,match", [
    (_set("data", "__shape__", "(1, 3, 1000000, 1000000)"), "max_parameters"),  # class 1: 4 TB
    (_set("conv0", "num_filter", "1000000"), "file holds only"),  # class 1: weights not in the file
    (_set("pre_fc1", "num_hidden", "1000000000"), "max_parameters"),
    (_set("pre_fc1", "num_hidden", "4000000"), "file holds only"),
    (_set("conv0", "num_filter", "0"), r"filter_list .*expected a list of integers >= 1"),  # class 2: ZeroDivision
    (_set("bn0", "momentum", "fast"), "momentum = 'fast' is not a number"),  # class 4: silently 0.9
])
def test_mxnet_graph_sizes_and_values_are_checked_before_building(tmp_path, model, edit, match):
    prefix = _mxnet(tmp_path, model, edit)
    with pytest.raises(FresnetError, match=match):
        fresnet.load_mxnet(prefix)


def test_mxnet_graph_with_ten_million_units_is_refused_without_building(tmp_path, model):
    # class 1: hung building 10**7 units
    def many(data):
        data["nodes"].append({"op": "null", "name": "stage4_unit10000000_conv1_weight", "inputs": []})
    prefix = _mxnet(tmp_path, model, many)
    with pytest.raises(FresnetError, match="max_units"):
        fresnet.load_mxnet(prefix)


def test_mxnet_deeply_nested_symbol_json_is_refused(tmp_path, model):
    # class 2: RecursionError from json.loads
    prefix = _mxnet(tmp_path, model)
    Path(f"{prefix}-symbol.json").write_text('{"nodes": [], "heads": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(FresnetError, match=r"nested \d+ levels deep, above the limit max_nesting"):
        fresnet.load_mxnet(prefix)


@pytest.mark.parametrize("which", ["-symbol.json", "-0000.params"])
def test_mxnet_files_that_are_not_regular_are_refused(tmp_path, model, which):
    prefix = _mxnet(tmp_path, model)
    path = Path(f"{prefix}{which}")
    path.unlink()
    fifo(path)
    with pytest.raises(FresnetError, match="FIFO"):
        fresnet.load_mxnet(prefix)


def test_save_mxnet_refuses_epochs_the_file_name_cannot_hold(tmp_path, model):
    with pytest.raises(FresnetError, match="epoch must be an integer from 0 to 9999"):
        fresnet.save_mxnet(model, tmp_path / "m", epoch=10000)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------------
# safetensors and arcface_torch .pth


@pytest.mark.parametrize("key,value,match", [
    ("emb_size", 10**9, "max_parameters"),  # class 1: 256 GB Linear
    ("emb_size", 4 * 10**6, "file holds only"),  # class 1: 1 GB Linear the file does not hold
    ("units", [1, 1, 1, 10**7], "max_units"),  # class 1: hung building
    ("input_size", [100000, 100000], "max_parameters"),
    ("emb_size", "sixteen", "emb_size = 'sixteen': expected an integer"),  # class 2: bare int() ValueError
    ("units", ["a", 1, 1, 1], "units = "),
    ("filter_list", [8, 0, 16, 16, 16], "filter_list = "),  # class 2: ZeroDivisionError
    ("filter_list", [8, -8, 16, 16, 16], "filter_list = "),  # class 2: torch negative dimension
    ("bn_mom", "fast", "bn_mom = 'fast'"),
    ("net_input", "x", "net_input = 'x'"),
    ("num_layers", "fifty", "num_layers = 'fifty'"),  # class 4: silently accepted
    ("emb_size", 16.5, "emb_size = 16.5"),  # class 4: silently int(16.5) = 16
])
def test_safetensors_stored_config_is_validated_before_building(tmp_path, key, value, match):
    config = dict(tiny_model().config.to_dict(), **{key: value})
    path = write_safetensors(tmp_path / "m.safetensors", config)
    with pytest.raises(FresnetError, match=rf"m\.safetensors: .*{match}"):
        fresnet.load(path)


@pytest.mark.parametrize("text,match", [
    ("[1, 2, 3]", "not a mapping"),  # class 2: AttributeError
    ("[" * 100000 + "]" * 100000, "max_nesting"),  # class 2: RecursionError
])
def test_safetensors_stored_config_text_is_parsed_safely(tmp_path, text, match):
    path = write_safetensors(tmp_path / "m.safetensors", text)
    with pytest.raises(FresnetError, match=match):
        fresnet.load(path)


def test_safetensors_integer_weights_are_refused(tmp_path, model):
    # class 4: int32 tensors were cast to float silently
    tensors = {k: (v * 100).to(torch.int32) for k, v in model.state_dict().items()}
    path = write_safetensors(tmp_path / "m.safetensors", tensors=tensors)
    with pytest.raises(FresnetError, match="has dtype torch.int32 \\(needs floating point\\)"):
        fresnet.load(path)


def test_pth_stride0_tensors_are_refused_before_anything_is_copied(tmp_path, model):
    # class 1: a few bytes on disk claimed 268 MB (zeros(1).expand(...)), then a network to match
    state = fresnet.export_arcface_torch(model)
    state["fc.weight"] = torch.zeros(1).expand(16, 16 * 512 * 512)
    torch.save(state, tmp_path / "m.pth")
    assert (tmp_path / "m.pth").stat().st_size < 1 << 20
    with pytest.raises(FresnetError, match=r"fc\.weight' declares shape \[16, 4194304\] .* over a storage of 1 values"):
        fresnet.load_arcface_torch(tmp_path / "m.pth")


@pytest.mark.parametrize("change,match", [
    (lambda s: s.update({"conv1.weight": torch.zeros(0, 3, 3, 3)}), "conv1.weight has shape \\[0, 3, 3, 3\\]"),
    (lambda s: s.update({k: v.to(torch.int32) for k, v in s.items() if v.is_floating_point()}), "dtype torch.int32"),
])
def test_pth_values_and_types_are_checked(tmp_path, model, change, match):
    state = dict(fresnet.export_arcface_torch(model))
    change(state)
    torch.save(state, tmp_path / "m.pth")
    with pytest.raises(FresnetError, match=match):
        fresnet.load_arcface_torch(tmp_path / "m.pth")


def test_pth_with_a_compressed_zip_entry_is_refused(tmp_path, model):
    buffer = io.BytesIO()
    torch.save(fresnet.export_arcface_torch(model), buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    with zipfile.ZipFile(tmp_path / "m.pth", "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            out.writestr(info.filename, source.read(info.filename))
    with pytest.raises(FresnetError, match="is compressed; torch.save never compresses"):
        fresnet.load_arcface_torch(tmp_path / "m.pth")


@pytest.mark.parametrize("name", ["m.safetensors", "m.pth"])
def test_weight_files_that_are_not_regular_are_refused(tmp_path, name):
    path = fifo(tmp_path / name)
    with pytest.raises(FresnetError, match="is a FIFO"):
        fresnet.load(path)


def test_fresnet_save_refuses_what_fresnet_load_refuses(tmp_path):
    model = tiny_model()
    model.head.fc1 = torch.nn.Identity()  # replaced after building: the stored config no longer matches
    with pytest.raises(FresnetError, match="not the network its config describes"):
        fresnet.save(model, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


# ---------------------------------------------------------------------------------------------------
# NetConfig and the limits


@pytest.mark.parametrize("options,match", [
    (dict(emb_size=0), "emb_size = 0: expected an integer >= 1"),
    (dict(emb_size=-5), "emb_size = -5"),
    (dict(input_size=[0, 0]), "input_size = \\[0, 0\\]"),  # class 2: ZeroDivisionError
    (dict(filter_list=[-1, 64, 128, 256, 512]), "filter_list = "),  # class 2: torch RuntimeError
    (dict(units=[0, 1, 1, 1]), "units = "),
    (dict(emb_size=float("nan")), "emb_size = nan"),
    (dict(bn_mom=float("inf")), "bn_mom = inf"),
    (dict(net_se=1, filter_list=[8, 8, 8, 8, 8]), "stage widths >= 16 with net_se=1"),  # failed in forward
    (dict(emb_size=10**9), "max_parameters"),  # class 1: 100 TB allocation
    (dict(units=[1, 1, 1, 10**7]), "max_units"),  # class 1: hung
    (dict(input_size=[100000, 100000], net_output="GAP"), "max_flops"),
])
def test_netconfig_bounds(options, match):
    with pytest.raises(FresnetError, match=match):
        fresnet.NetConfig(**dict(dict(num_layers=18), **options))


def test_limits_can_be_raised_for_trusted_inputs(monkeypatch):
    with pytest.raises(FresnetError, match="max_units=1,000"):
        fresnet.NetConfig(num_layers=None, units=[300, 300, 300, 300])
    with fresnet.limits.override(max_units=2000, max_flops=10**15, max_parameters=10**10):
        assert sum(fresnet.NetConfig(num_layers=None, units=[300, 300, 300, 300]).units) == 1200
    assert fresnet.limits.current().max_units == 1000
    assert fresnet.limits.parse_cap("max_tensor_bytes", "8GiB", "test") == 8 << 30
    assert fresnet.limits.parse_cap("max_parameters", "2e9", "test") == 2_000_000_000
    with pytest.raises(FresnetError, match="unknown limit 'max_beans'"):
        fresnet.limits.parse_cap("max_beans", 1, "test")
    with pytest.raises(FresnetError, match="not a whole number"):
        fresnet.limits.parse_cap("max_units", "lots", "test")


def test_limits_come_from_the_environment(monkeypatch):
    from fresnet.limits import _env_limits

    limits = _env_limits({"FRESNET_MAX_UNITS": "5000", "FRESNET_MAX_TENSOR_BYTES": "1GiB"})
    assert limits.max_units == 5000 and limits.max_tensor_bytes == 1 << 30
    with pytest.raises(FresnetError, match="environment variable FRESNET_MAX_UNITS"):
        _env_limits({"FRESNET_MAX_UNITS": "-1"})


@pytest.mark.parametrize("head", ["Z", "E", "FC", "SFC", "GAP", "GNAP", "GDC", "F", "G", "H", "I", "J"])
def test_network_size_is_exact_for_every_unit_and_head(head):
    from fresnet.network.config import HEADS
    from fresnet.network.size import network_size

    variants = [(1, False, 0), (1, True, 1), (2, False, 2), (2, True, 1), (3, False, 1), (3, True, 0), ("3x", True, 2)]
    one = variants[HEADS.index(head) % len(variants)]
    for unit, bottle_neck, net_input in variants if head in ("E", "GNAP") else [one]:
        for emb in (64, 1024):
            options = dict(num_layers=None, units=[1, 2, 1, 1], net_unit=unit, bottle_neck=bottle_neck,
                           net_input=net_input, net_output=head, emb_size=emb, net_se=unit == 2,
                           filter_list=[32, 64, 128, 128, 256], net_act="prelu" if emb == 64 else "relu",
                           input_size=(224, 224) if net_input == 0 else (112, 112))
            config = fresnet.NetConfig(**options)
            with torch.device("meta"):
                model = fresnet.FResNet(config)
            assert network_size(config).state_values == sum(v.numel() for v in model.state_dict().values()), options


def test_network_flops_bound_the_measured_ones():
    from fresnet.network.size import network_size

    for name in ("r18", "r50"):
        measured = fresnet.summarize(name).flops
        bound = network_size(fresnet.create_model(name).config).flops
        assert measured <= bound <= 2 * measured


# ---------------------------------------------------------------------------------------------------
# training config, output, resume


def _train_config(tmp_path, **overrides):
    cfg = {
        "network": "r18", "net": {"units": [1, 1, 1, 1], "filter_list": [8, 8, 16, 16, 32], "input_size": [16, 16],
                                  "emb_size": 32, "net_output": "E"},
        "loss": "arcface", "loss_s": 16.0, "dataset": "synthetic",
        "synthetic": {"num_identities": 12, "images_per_identity": 6, "holdout_identities": 8, "seed": 3},
        "output": str(tmp_path / "run"), "max_steps": 4, "batch_size": 16, "lr": 0.05, "log_every": 1,
        "progress": False, "seed": 5, "checkpoint_every": 2,
    }
    cfg.update(overrides)
    return cfg


def test_yaml_alias_bomb_is_refused_on_load(tmp_path):
    # class 2: 560 bytes of aliases hung the first checkpoint (the config copy expanded 9**9 items)
    chain = ["&a [x, x, x, x, x, x, x, x, x]"] + [f"&{c} [" + ", ".join([f"*{p}"] * 9) + "]"
                                               for p, c in zip("abcdefgh", "bcdefghi")]
    path = tmp_path / "bomb.yaml"
    path.write_text("network: r18\nrand_mirror: [" + ", ".join(chain) + "]\n")
    with pytest.raises(FresnetError, match=r"bomb\.yaml: line 2: YAML aliases \(\*a\) are not accepted"):
        fresnet.train.load_config(path)


@pytest.mark.parametrize("text,match", [
    ("a: " + "[" * 5000 + "]" * 5000, "max_nesting"),  # class 2: RecursionError in the composer
    ("network: !!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    ("- 1\n- 2\n", "must be a mapping"),
])
def test_yaml_configs_are_parsed_safely(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(FresnetError, match=match):
        fresnet.train.load_config(path)


@pytest.mark.parametrize("key,value,match", [
    ("lr", "fast", r"overrides?: lr = 'fast': expected a finite number >= 0"),  # class 2: later TypeError
    ("lr", "nan", "lr = 'nan'"),
    ("batch_size", "many", "batch_size = 'many'"),  # class 2: bare int() ValueError
    ("max_steps", "inf", "max_steps = 'inf'"),  # class 2: OverflowError
    ("max_steps", "1e30", "max_steps = '1e30'"),
    ("sample_rate", "half", "sample_rate = 'half'"),
    ("lr_steps", "[a]", "lr_steps = 'a'"),
    ("seed", "x", "seed = 'x'"),
    ("momentum", ".inf", "momentum = inf"),
])
def test_override_values_are_typed_with_their_source(key, value, match):
    with pytest.raises(FresnetError, match=match):
        fresnet.train.load_config("synthetic-r18", [f"{key}={value}"])


@pytest.mark.parametrize("options,match", [
    ({"net": 5}, "net = 5: expected a mapping"),  # class 2: dict(5) TypeError
    ({"val_targets": 5}, "val_targets = 5: expected a list"),
    ({"synthetic": {"num_identities": "x"}}, "synthetic.num_identities = 'x'"),
    ({"synthetic": {"num_identities": 10**9}}, "synthetic.num_identities"),  # class 1
    ({"synthetic": {"num_identities": 10**6, "images_per_identity": 100}}, "max_tensor_bytes"),  # class 1
    ({"net": {"emb_size": 10**9}}, "network: .*max_parameters"),  # class 1
])
def test_config_values_are_typed(tmp_path, options, match):
    with pytest.raises(FresnetError, match=match):
        fresnet.train.load_config(_train_config(tmp_path, **options))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    torch.set_num_threads(1)
    fresnet.train.run(_train_config(out))
    return out / "run"


def _resume_with(finished_run, tmp_path, edit):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    path = out / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)
    return _train_config(tmp_path, max_steps=6, resume=True)


@pytest.mark.parametrize("edit,match", [
    (lambda s: s.update(step=-5), "step = -5: expected an integer in \\[0, "),  # class 4: resumed, dropped log rows
    (lambda s: s.update(step="two"), "step = 'two'"),
    (lambda s: s.update(step=2.5), "step = 2.5"),
    (lambda s: s.pop("model"), "has no 'model'"),  # class 2: KeyError
    (lambda s: s["model"].update({"stem.conv0.weight": torch.zeros(3, 3, 3, 3)}), "wrong shape"),  # RuntimeError
    (lambda s: s.update(fc={"weight": "x"}), "not the classifier's 2-D weight"),
    (lambda s: s.update(elapsed_s=float("nan")), "elapsed_s = nan"),
    (lambda s: s.update(world_size=0), "world_size = 0"),
])
def test_resume_validates_the_checkpoint(finished_run, tmp_path, edit, match):
    cfg = _resume_with(finished_run, tmp_path, edit)
    with pytest.raises(FresnetError, match=match):
        fresnet.train.run(cfg)


def test_resume_removes_temp_files_a_killed_run_left(finished_run, tmp_path):
    # class 3: a kill during a log write left .log.csv.*.tmp behind
    cfg = _resume_with(finished_run, tmp_path, lambda s: None)
    (tmp_path / "run" / ".log.csv.abc123.tmp").write_text("half a row")
    fresnet.train.run(cfg)
    assert not list((tmp_path / "run").glob(".*.tmp"))


@pytest.mark.parametrize("output", ["file", "file/run"])
def test_output_that_is_a_file_names_the_path(tmp_path, output):
    # class 3: output=<a file> was a FileExistsError traceback from mkdir
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError) as info:
        fresnet.train.run(_train_config(tmp_path, output=str(tmp_path / output), max_steps=2))
    assert info.value.filename and str(tmp_path / "file") in info.value.filename


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_config_file_that_is_not_regular_is_refused(tmp_path, kind):
    path = tmp_path / "c.yaml"
    if kind == "fifo":
        fifo(path)
    else:
        path.symlink_to("/dev/zero")
    with pytest.raises(FresnetError, match=r"c\.yaml: is a"):
        fresnet.train.load_config(path)


# ---------------------------------------------------------------------------------------------------
# the command line


def test_cli_maps_every_os_error_to_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    # class 3: disk full (ENOSPC at fsync) gave a traceback in every writing command
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    path = tmp_path / "m.safetensors"
    fresnet.save(tiny_model(), path)
    monkeypatch.setattr(os, "fsync", full)
    assert cli_main(["convert", str(path), str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert f"fresnet convert: error: {tmp_path / 'out.pth'}: No space left on device" in err
    assert "Traceback" not in err and not list(tmp_path.glob(".out.pth*"))


@pytest.mark.parametrize("command", ["pack", "embed", "make-bin"])
def test_writing_commands_report_a_full_disk_with_their_destination(tmp_path, monkeypatch, capsys, command):
    # class 3 in every writing command, not only convert: each ends in one line naming what it writes
    faces = tmp_path / "faces"
    for person in range(2):
        (faces / f"p{person}").mkdir(parents=True)
        for k in range(2):
            (faces / f"p{person}" / f"{k}.jpg").write_bytes(jpeg(seed=10 * person + k, size=32))
    model = tmp_path / "m.safetensors"
    fresnet.save(tiny_model(), model)
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("p0/0.jpg p0/1.jpg 1\np0/0.jpg p1/0.jpg 0\n")
    argv, destination = {
        "pack": (["pack", str(faces), str(tmp_path / "out" / "train")], tmp_path / "out" / "train.rec"),
        "embed": (["embed", str(model), str(faces), "-o", str(tmp_path / "e.npy")], tmp_path / "e.npy"),
        "make-bin": (["make-bin", str(pairs), str(tmp_path / "v.bin"), "--root", str(faces)], tmp_path / "v.bin"),
    }[command]

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert f"fresnet {command}: error: {destination}: No space left on device" in err, err
    assert "Traceback" not in err


def test_cli_file_size_limit_and_parent_file(tmp_path, capsys):
    import resource
    import signal

    path = tmp_path / "m.safetensors"
    fresnet.save(tiny_model(), path)
    (tmp_path / "file").write_text("x")
    assert cli_main(["convert", str(path), str(tmp_path / "file" / "m.pth")]) == 2
    assert f"{tmp_path / 'file' / 'm.pth'}: a parent of this path is a file" in capsys.readouterr().err
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, old[1]))
    try:
        code = cli_main(["convert", str(path), str(tmp_path / "big.pth")])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)
    assert code == 2 and f"{tmp_path / 'big.pth'}: File too large" in capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["embed", "M", "IMG", "--batch-size", "0"], "expected an integer >= 1, got 0"),  # class 5: range() error
    (["eval", "M", "--bin", "B", "--nfolds", "1"], "expected an integer >= 2"),
    (["compare", "M", "IMG", "IMG", "--threshold", "nan"], "expected a finite number"),
    (["convert", "M", "out", "--dst-epoch", "-2"], "between 0 and 9999"),
    (["memory", "r18", "--batch", "0"], "expected an integer >= 1"),
    (["synth", "out", "--size", "-4"], "expected an integer >= 1"),
    (["demo", "--max-steps", "0"], "expected an integer >= 1"),
    (["demo", "--train-budget", "nan"], "expected a finite number"),
    (["demo", "--pairs", "-6"], "expected an integer >= 1"),
])
def test_cli_numeric_options_are_typed(argv, match, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    assert info.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("value,match", [
    ("emb_size=abc", "emb_size = 'abc'"), ("emb_size=0", "emb_size = 0"), ("input_size=0x0", "input_size"),
    ("filter_list=[-1,64,128,256,512]", "filter_list"), ("emb_size=1000000000", "max_parameters"),
    ("units=[1,1,1,10000000]", "max_units"), ("emb_size=[[[[[]]]]]", "emb_size"),
])
def test_cli_set_values_are_validated(value, match, capsys):
    assert cli_main(["summary", "r18", "--set", value]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err


def test_cli_inputs_that_are_not_regular_files_are_refused(tmp_path, capsys):
    # class 3: `convert` on a FIFO blocked forever, `embed` of /dev/zero ran out of memory
    pipe = fifo(tmp_path / "in.safetensors")
    assert cli_main(["convert", str(pipe), str(tmp_path / "out.pth")]) == 2
    assert "is a FIFO" in capsys.readouterr().err
    model = tmp_path / "m.safetensors"
    fresnet.save(tiny_model(), model)
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    assert cli_main(["embed", str(model), str(tmp_path / "zero.jpg"), "-o", str(tmp_path / "e.npy")]) == 2
    assert "is a character device" in capsys.readouterr().err


def test_cli_limit_option_sets_a_limit(capsys):
    assert cli_main(["--limit", "max_units=4", "summary", "r18"]) == 2
    assert "needs 8, above the limit max_units=4" in capsys.readouterr().err
    assert cli_main(["--limit", "max_units=lots", "summary", "r18"]) == 2
    assert "max_units='lots' is not a whole number" in capsys.readouterr().err
    assert cli_main(["--limit", "max_units=8", "summary", "r18", "--set", "units=[1,1,1,1]", "--rows", "1"]) == 0


def test_train_overrides_may_follow_the_flags(tmp_path, monkeypatch):
    # class 5: `train CONFIG a=1 --no-progress b=2` was "unrecognized arguments: b=2"
    seen = {}

    def fake_train(cfg):
        seen["cfg"] = cfg
        raise FresnetError("stop here")

    monkeypatch.setattr("fresnet.train.loop.train", fake_train)
    code = cli_main(["train", "synthetic-r18", "max_steps=3", "--no-progress", f"output={tmp_path}", "batch_size=8"])
    assert code == 2
    cfg = seen["cfg"]
    assert (cfg.max_steps, cfg.output, cfg.batch_size, cfg.progress) == (3, str(tmp_path), 8, False)
    with pytest.raises(SystemExit):
        cli_main(["train", "synthetic-r18", "--no-progress", "--bogus"])


@pytest.mark.parametrize("options,match", [
    ({"batch_size": 0}, "batch_size = 0: expected an integer >= 1"),  # torch's split(0) error before
    ({"limit": "many"}, "limit = 'many': expected an integer >= 1"),
    ({"input_size": (32, -1)}, "input_size"),
])
def test_calibration_options_are_validated(options, match):
    from fresnet.inference.calibration import calibration_batches

    images = torch.rand(20, 3, 32, 32) * 255
    size = options.pop("input_size", (32, 32))
    with pytest.raises(FresnetError, match=match):
        calibration_batches(images, size, **options)


# ---------------------------------------------------------------------------------------------------
# issue 24: the eight the held-out suite still found (the two resume ones are training's)


def _valid_pack_body(issame=(True,)) -> bytes:
    """A valid pack's pickle without its PROTO header (protocol 2), to append after crafted opcodes."""
    return pickle.dumps(([jpeg(i) for i in range(2 * len(issame))], list(issame)), protocol=2)[2:]


@pytest.mark.parametrize("through", ["load_bin", "eval"])
def test_bin_whose_issame_is_a_0d_array_is_refused(tmp_path, capsys, through):
    path = tmp_path / "zero_d.bin"
    path.write_bytes(pickle.dumps(([jpeg(), jpeg(1)], np.array(True)), protocol=2))
    if through == "load_bin":
        with pytest.raises(FresnetError, match=r"zero_d\.bin: issame is a 0-d array"):
            load_bin(path)
    else:
        tiny = ["--set", "units=[1,1,1,1]", "--set", "filter_list=[8,8,8,8,8]", "--set", "emb_size=16"]
        assert cli_main(["eval", "r18", *tiny, "--bin", str(path), "--out", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err
        assert "issame is a 0-d array" in err and "Traceback" not in err


@pytest.mark.parametrize("target", [b"cnumpy\ndtype\n", b"cnumpy\nndarray\n", b"c_codecs\nencode\n"])
def test_bin_pickle_build_on_an_allowed_global_is_refused(tmp_path, target):
    from fresnet.data import verification_bin

    # GLOBAL target; EMPTY_DICT; 'evil' -> 1 (SETITEM); BUILD; POP; then a valid pack
    build = target + b"}X\x04\x00\x00\x00evilK\x01sb0"
    path = tmp_path / "build.bin"
    path.write_bytes(b"\x80\x02" + build + _valid_pack_body())
    with pytest.raises(FresnetError, match=r"build\.bin: .*BUILD"):
        load_bin(path)
    # slot state, which sets attributes with setattr, is refused as well
    path.write_bytes(b"\x80\x02" + target + b"N}X\x04\x00\x00\x00evilK\x01s\x86b0" + _valid_pack_body())
    with pytest.raises(FresnetError, match=r"build\.bin: .*BUILD"):
        load_bin(path)
    for helper in (verification_bin._safe_dtype, verification_bin._NDArrayToken, verification_bin._safe_latin1_encode):
        assert not hasattr(helper, "evil")


def test_mxnet_params_with_a_zero_and_a_huge_dimension_is_refused(tmp_path, model):
    out = io.BytesIO()
    out.write(struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Ii", 0xF993FAC9, 0))
    out.write(struct.pack("<i2q", 2, 0, 1 << 62) + struct.pack("<iii", 1, 0, 0) + b"\0" * 64)
    prefix = _mxnet(tmp_path, model, params=out.getvalue())
    with pytest.raises(FresnetError, match=r"model-0000\.params.*shape \(0, 4611686018427387904\)"):
        fresnet.load_mxnet(prefix)


@pytest.mark.parametrize("value", ["abc", 18.5, True, -50])
def test_arcface_torch_num_layers_must_be_a_depth(tmp_path, model, value):
    torch.save(dict(fresnet.export_arcface_torch(model)), tmp_path / "m.pth")
    with pytest.raises(FresnetError, match=r"num_layers"):
        fresnet.load_arcface_torch(tmp_path / "m.pth", num_layers=value)


def test_every_limit_message_says_how_to_raise_it(tmp_path, rec_dir):
    """Issue 24 leftovers: the hand-written limit messages carry limits.check's hint too."""
    from fresnet.validate import load_json, load_yaml

    with pytest.raises(FresnetError, match=r"max_nesting=64.*`fresnet --limit max_nesting=\.\.\.`"):
        load_json("[" * 70 + "]" * 70, "x.json")
    with pytest.raises(FresnetError, match=r"max_nesting=64.*FRESNET_MAX_NESTING=\.\.\."):
        load_yaml("a:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 70)) + "  " * 70 + "v: 1\n", "x.yaml")
    with fresnet.limits.override(max_record_bytes=64):
        with pytest.raises(
            FresnetError, match=r"max_record_bytes.*fresnet\.limits\.override\(max_record_bytes=\.\.\.\)"
        ):
            RecordIODataset(rec_dir)[0]
