"""Fuzzing every reader and the config layer: property-based inputs (hypothesis) and mutations of
real files (truncated, bytes flipped, fields duplicated or set huge).

The property: the only exception that escapes is :class:`FresnetError` (or an ``OSError`` that names
its path), no example runs longer than ``EXAMPLE_SECONDS``, and memory stays bounded: the module
runs under a soft ``RLIMIT_AS`` of its current size plus ``MEMORY_HEADROOM`` (an attempt to allocate
more is a MemoryError, which fails the test) and its peak RSS may grow by at most that much.

CI runs the derandomized ``ci`` profile (a few dozen examples per test, well under a minute);
``FRESNET_FUZZ_PROFILE=long`` (``make fuzz``) runs thousands. ``benchmarks/fuzz_campaign.py`` is the
campaign of crafted cases, each in its own process.
"""
from __future__ import annotations

import json
import os
import pickle
import resource
import signal
import struct
import warnings
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fresnet
import fresnet.train
from fresnet.errors import FresnetError
from hostile_fixtures import jpeg, tiny_model, write_recordio, write_safetensors

GiB = 1 << 30
MEMORY_HEADROOM = 3 * GiB
EXAMPLE_SECONDS = 20

settings.register_profile("ci", derandomize=True, max_examples=25, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=2000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
PROFILE = settings.get_profile(os.environ.get("FRESNET_FUZZ_PROFILE", "ci"))


class Hang(Exception):
    """An example ran past EXAMPLE_SECONDS (a blocking read, an endless loop)."""


def _vm_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module", autouse=True)
def bounded_resources():
    """A soft address-space cap for the whole module, and a check on the peak RSS afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _vm_bytes() + MEMORY_HEADROOM if os.path.exists("/proc/self/status") else None
    if cap is not None and (hard == resource.RLIM_INFINITY or cap < hard):
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert peak_after - peak_before < MEMORY_HEADROOM, f"peak RSS grew by {(peak_after - peak_before) / GiB:.2f} GiB"


def only_clean_errors(fn, *args, **kwargs):
    """Run ``fn``; a FresnetError or an OSError naming a path is fine, anything else fails."""
    def alarm(signum, frame):
        raise Hang(f"{getattr(fn, '__name__', fn)} still running after {EXAMPLE_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, EXAMPLE_SECONDS)
    try:
        return fn(*args, **kwargs)
    except FresnetError as exc:
        assert str(exc), "an empty error message"
        return None
    except OSError as exc:
        assert exc.filename is not None, f"an OSError without a path: {exc!r}"
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------------
# mutations of real files

WORDS = [b"\xff" * 8, struct.pack("<Q", 1 << 40), struct.pack("<I", 0x7FFFFFFF) * 2, b"\0" * 8,
         struct.pack("<d", float("nan")), struct.pack("<f", float("inf")) * 2]


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` truncated, with bits flipped, a region duplicated, zeroed, or a word set huge."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "duplicate", "zero", "word"]))
        if not b:
            break
        pos = draw(st.integers(0, len(b) - 1))
        if op == "truncate":
            del b[pos:]
        elif op == "flip":
            b[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "duplicate":
            n = draw(st.integers(1, 512))
            b[pos:pos] = b[pos:pos + n] * draw(st.integers(2, 8))
        elif op == "zero":
            n = draw(st.integers(1, 64))
            b[pos:pos + n] = bytes(len(b[pos:pos + n]))
        else:
            pos &= ~3
            word = draw(st.sampled_from(WORDS))
            b[pos:pos + len(word)] = word
    return bytes(b)


FILES: dict[str, bytes] = {}  # one valid file of each format; a global, so failing examples do not print it


@pytest.fixture(scope="module", autouse=True)
def files(tmp_path_factory):
    """One valid file of each format (bytes), built once."""
    root = tmp_path_factory.mktemp("fuzz-fixtures")
    model = tiny_model()
    out = FILES
    fresnet.save(model, root / "m.safetensors")
    out["safetensors"] = (root / "m.safetensors").read_bytes()
    fresnet.export_arcface_torch(model, root / "m.pth")
    out["pth"] = (root / "m.pth").read_bytes()
    fresnet.save_mxnet(model, root / "mx")
    out["symbol"] = (root / "mx-symbol.json").read_bytes()
    out["params"] = (root / "mx-0000.params").read_bytes()
    from fresnet.data import save_bin

    save_bin(root / "p.bin", [jpeg(i) for i in range(4)], [True, False])
    out["bin"] = (root / "p.bin").read_bytes()
    write_recordio(root / "rec", identities=3, images=2)
    for name in ("train.rec", "train.idx", "property"):
        out[name] = (root / "rec" / name).read_bytes()
    out["jpeg"] = jpeg(7)
    from fresnet.eval.ijb.synthetic import synthetic_features, synthetic_ijb, write_meta

    ijb = synthetic_ijb(40, seed=3)
    write_meta(ijb, root / "ijb")
    for meta in sorted((root / "ijb" / "meta").iterdir()):
        out["ijb/" + meta.name] = meta.read_bytes()
    out["ijb features"] = synthetic_features(ijb, dim=8)
    yield out
    out.clear()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-scratch")


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@PROFILE
@given(data=st.data())
def test_mutated_bin_packs(scratch, data):
    from fresnet.data import load_bin

    path = _write(scratch, "p.bin", data.draw(mutated(FILES["bin"])))
    only_clean_errors(load_bin, path, image_size=(16, 16))


@PROFILE
@given(data=st.data())
def test_mutated_recordio(scratch, data):
    from fresnet.data import RecordIODataset

    which = data.draw(st.sampled_from(["train.rec", "train.idx", "property"]))
    folder = scratch / "rec"
    folder.mkdir(exist_ok=True)
    for name in ("train.rec", "train.idx", "property"):
        _write(folder, name, data.draw(mutated(FILES[name])) if name == which else FILES[name])

    on_error = data.draw(st.sampled_from(["raise", "skip"]))

    def read():
        ds = RecordIODataset(folder, on_error=on_error)
        return [ds[i] for i in range(min(len(ds), 8))]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skip mode warns about each bad record
        only_clean_errors(read)


@PROFILE
@given(data=st.data())
def test_mutated_ijb_meta_files(scratch, data):
    from fresnet.eval.ijb import evaluate

    names = sorted(name[4:] for name in FILES if name.startswith("ijb/"))
    which = data.draw(st.sampled_from(names))
    meta = scratch / "ijb" / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    for name in names:
        _write(meta, name, data.draw(mutated(FILES["ijb/" + name])) if name == which else FILES["ijb/" + name])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        only_clean_errors(evaluate, scratch / "ijb", FILES["ijb features"])


@PROFILE
@given(data=st.data())
def test_mutated_mxnet_checkpoints(scratch, data):
    from fresnet.interop.mxnet import load_mxnet

    which = data.draw(st.sampled_from(["symbol", "params"]))
    _write(scratch, "mx-symbol.json", data.draw(mutated(FILES["symbol"])) if which == "symbol" else FILES["symbol"])
    _write(scratch, "mx-0000.params", data.draw(mutated(FILES["params"])) if which == "params" else FILES["params"])
    only_clean_errors(load_mxnet, scratch / "mx")


@PROFILE
@given(data=st.data())
def test_mutated_safetensors(scratch, data):
    raw = FILES["safetensors"]
    head = 8 + struct.unpack("<Q", raw[:8])[0]  # mutate the header (JSON and config) more often than tensor data
    part = data.draw(st.sampled_from(["header", "header", "all"]))
    blob = data.draw(mutated(raw[:head])) + raw[head:] if part == "header" else data.draw(mutated(raw))
    only_clean_errors(fresnet.load, _write(scratch, "m.safetensors", blob))


@PROFILE
@given(data=st.data())
def test_mutated_pth(scratch, data):
    only_clean_errors(fresnet.load_arcface_torch, _write(scratch, "m.pth", data.draw(mutated(FILES["pth"]))))


@PROFILE
@given(data=st.data())
def test_mutated_images(data):
    from fresnet.data.decode import decode_image

    only_clean_errors(decode_image, data.draw(mutated(FILES["jpeg"])), "fuzz image")


# ---------------------------------------------------------------------------------------------------
# property-based: values of every type where numbers, strings and lists are expected

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30), st.integers(-3, 600),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
    st.sampled_from(["3x", "E", "GDC", "prelu", "112x96", "1e400", "-1", "nan", "[1,2]"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                      st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=12)
NET_KEYS = ["num_layers", "net_unit", "net_se", "net_act", "net_input", "net_output", "emb_size", "bn_mom",
            "input_size", "units", "filter_list", "bottle_neck", "depth", "head", "bogus"]


@PROFILE
@given(options=st.dictionaries(st.sampled_from(NET_KEYS), values, max_size=5))
def test_netconfig_from_any_values(options):
    def build():
        config = fresnet.NetConfig.from_dict(dict(options))
        from fresnet.network.size import network_size

        size = network_size(config)
        limits = fresnet.limits.current()
        assert size.state_values <= limits.max_parameters and size.flops <= limits.max_flops
        assert fresnet.NetConfig.from_json(config.to_json()) == config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        only_clean_errors(build)


@PROFILE
@given(options=st.dictionaries(st.sampled_from(NET_KEYS), values, max_size=4))
def test_stored_safetensors_configs(scratch, options):
    config = dict(tiny_model().config.to_dict(), **options)
    try:
        text = json.dumps(config)
    except (ValueError, TypeError):
        return
    path = write_safetensors(scratch / "c.safetensors", text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        only_clean_errors(fresnet.load, path)


TRAIN_KEYS = ["lr", "batch_size", "max_steps", "warmup_steps", "sample_rate", "lr_steps", "val_targets", "net",
              "synthetic", "seed", "momentum", "amp", "loss", "loss_s", "log_every", "rand_mirror", "per_batch_size",
              "network", "emb_size", "units", "output", "bogus"]


@PROFILE
@given(options=st.dictionaries(st.sampled_from(TRAIN_KEYS), values, max_size=4))
def test_training_configs_from_any_values(options):
    only_clean_errors(fresnet.train.load_config, dict(options))


@PROFILE
@given(items=st.lists(st.tuples(st.sampled_from(TRAIN_KEYS), st.text(max_size=24)), max_size=4))
def test_training_overrides_from_any_text(items):
    only_clean_errors(fresnet.train.load_config, "synthetic-r18", [f"{k}={v}" for k, v in items])


@PROFILE
@given(text=st.text(max_size=200) | st.sampled_from(["a: &x [1]\nb: *x\n", "a: " + "[" * 500 + "]" * 500,
                                                      "network: !!python/object:os.system {}"]))
def test_yaml_config_files_from_any_text(scratch, text):
    path = scratch / "c.yaml"
    path.write_bytes(text.encode("utf-8", "replace"))
    only_clean_errors(fresnet.train.load_config, path)


@PROFILE
@given(value=values)
def test_checkpoint_entries_of_any_value(scratch, value):
    from fresnet.train.checkpoint import FORMAT, load_checkpoint

    state = {"format": FORMAT, "step": 3, "elapsed_s": 1.0, "world_size": 1, "global_batch": 16,
             "model": {"w": torch.zeros(2)}, "fc": {"weight": torch.zeros(3, 2), "bias": None}, "momentum": {},
             "rng": {"cpu": [torch.zeros(8, dtype=torch.uint8)], "cuda": None}, "scaler": None, "config": {}}
    for key in ("step", "elapsed_s", "world_size", "fc", "rng", "model"):
        broken = dict(state, **{key: value})
        try:
            torch.save(broken, scratch / "checkpoint.pt")
        except Exception:  # a value torch cannot save is not a checkpoint anyone can write
            continue
        only_clean_errors(load_checkpoint, scratch / "checkpoint.pt")


@PROFILE
@given(header=st.tuples(st.integers(0, 2**32 - 1), st.floats(width=32, allow_nan=True, allow_infinity=True),
                        st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)),
       labels=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=4),
       tail=st.binary(max_size=64))
def test_recordio_records_of_any_header(header, labels, tail):
    from fresnet.data.recordio.format import IRHEADER, image_label, key_range, unpack_record

    record = IRHEADER.pack(*header) + struct.pack(f"<{len(labels)}f", *labels) + tail

    def read():
        parsed, _ = unpack_record(record, "fuzz record")
        image_label(parsed, "fuzz record")
        if parsed.flag >= 2:
            first, end = key_range(parsed, "fuzz record", "range")
            assert 0 <= first <= end <= fresnet.limits.current().max_identities
    only_clean_errors(read)


@PROFILE
@given(text=st.text(max_size=40) | st.from_regex(r"-?[0-9]{1,30},-?[0-9]{1,6},-?[0-9e.]{1,6}", fullmatch=True))
def test_property_files_of_any_text(scratch, text):
    from fresnet.data.recordio.format import read_property

    path = scratch / "property"
    path.write_bytes(text.encode("utf-8", "replace"))

    def read():
        values = read_property(path)
        assert values is None or all(v >= 1 for v in values)
    only_clean_errors(read)


@PROFILE
@given(entries=st.lists(values, max_size=6), flags=values)
def test_bin_packs_of_any_pickled_content(scratch, entries, flags):
    from fresnet.data import load_bin

    try:
        blob = pickle.dumps((entries, flags), protocol=4)
    except (RecursionError, pickle.PicklingError):
        return
    only_clean_errors(load_bin, _write(scratch, "v.bin", blob))


@PROFILE
@given(width=st.integers(1, 64), height=st.integers(1, 64),
       kind=st.sampled_from(["JPEG", "PNG", "progressive JPEG", "JPEG with EXIF", "BMP"]))
def test_header_dimensions_agree_with_pillow(width, height, kind):
    import io

    import numpy as np
    from PIL import Image

    from fresnet.data.decode import image_dimensions

    image = Image.fromarray(np.random.default_rng(width * 100 + height).integers(0, 256, (height, width, 3),
                                                                                   dtype=np.uint8))
    buffer = io.BytesIO()
    if kind == "progressive JPEG":
        image.save(buffer, "JPEG", progressive=True)
    elif kind == "JPEG with EXIF":
        exif = Image.Exif()
        exif[0x010F] = "camera"
        image.save(buffer, "JPEG", exif=exif.tobytes())
    else:
        image.save(buffer, kind)
    assert image_dimensions(buffer.getvalue(), "test") == (width, height)


@PROFILE
@given(value=values | st.text(alphabet="+-0123456789.e nainf", max_size=12))
def test_validation_primitives_take_any_value(value):
    import fresnet.validate as V

    def check():
        number = V.as_int(value, "k", "fuzz", minimum=-5, maximum=10**6)
        assert isinstance(number, int) and not isinstance(number, bool) and -5 <= number <= 10**6
    only_clean_errors(check)

    def check_float():
        number = V.as_float(value, "k", "fuzz", minimum=0.0, below=1.0)
        assert isinstance(number, float) and 0.0 <= number < 1.0
    only_clean_errors(check_float)
    only_clean_errors(lambda: isinstance(V.as_bool(value, "k", "fuzz"), bool) or 1 / 0)
    only_clean_errors(lambda: V.as_int_tuple(value, "k", "fuzz", minimum=1))
    assert len(V.describe(value)) < 400
