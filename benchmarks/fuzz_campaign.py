"""Hostile-input campaign: crafted and mutated files and command lines against every input surface.

Each case runs in its own forked process under an address-space cap (``RLIMIT_AS``, 4 GiB by
default) and a time limit, and its outcome is classified:

* ``clean``: a :class:`fresnet.FresnetError` (or an ``OSError`` naming its path) from the API, or a
  one-line ``fresnet CMD: error: ...`` and exit code 2 from the command line;
* ``ok``: valid (or harmlessly mutated) input accepted;
* ``traceback``: any other exception escaped (or the process died of a signal other than a kill);
* ``hang``: the time limit passed;
* ``memory``: ``MemoryError``, an allocator failure, a SIGKILL, or a peak RSS above ``--rss-limit``;
* ``accepted-invalid``: input the case knows to be invalid came back as data (or left debris);
* ``refused-valid``: a valid command line was refused.

Usage::

    python benchmarks/fuzz_campaign.py                   # every surface, 24 mutations per fixture
    python benchmarks/fuzz_campaign.py --mutations 100 --json fuzz.json
    PYTHONPATH=/other/checkout/src python benchmarks/fuzz_campaign.py   # measure another tree

Only public APIs and the ``fresnet`` command line are used, so the same script measures a tree
before and after a fix. ``make fuzz`` runs it.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import pickle
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

GiB = 1 << 30
SURFACES = ("bin", "recordio", "mxnet", "safetensors/pth", "train", "cli")
OUTCOMES = ("clean", "ok", "traceback", "hang", "memory", "accepted-invalid", "refused-valid")


@dataclass
class Case:
    surface: str
    name: str
    klass: str  # "sizes", "values", "filesystem", "invalid-data", "cli", "mutation", "safe"
    run: Callable[[], Any]  # API: returns data or raises; CLI: returns a list of argv strings
    expect: str = "error"  # "error": must be refused; "ok": must succeed; "any": either is fine
    cli: bool = False
    timeout: float = 30.0
    fsize: Optional[int] = None  # RLIMIT_FSIZE for the child (file-size-limit cases)
    check: Optional[Callable[[], Optional[str]]] = None  # after an accepted run: debris -> reason
    unprivileged: bool = False  # as root, drop the capability to write into read-only folders
    disk_full: bool = False  # every fsync fails with ENOSPC, as on a full disk


@dataclass
class Result:
    surface: str
    name: str
    klass: str
    outcome: str
    detail: str
    seconds: float
    peak_rss_mb: float


# ---------------------------------------------------------------------------------------------------
# running one case in a forked, resource-limited child


def _memory_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in text or "not enough memory" in text \
        or "DefaultCPUAllocator" in text or "std::bad_alloc" in text


def _drop_dac_override() -> None:
    """Root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH: file modes apply to it again (so a
    read-only folder is read-only), while it still owns its files and the interpreter's."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    libc = ctypes.CDLL(None, use_errno=True)
    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3
    libc.capget(ctypes.byref(header), data)
    data[0].effective &= ~((1 << 1) | (1 << 2))
    data[0].permitted &= ~((1 << 1) | (1 << 2))
    libc.capset(ctypes.byref(header), data)


def _child(case: Case, result_fd: int, log: int, as_limit: int) -> None:
    # output and result go to pipes: a file-size limit (RLIMIT_FSIZE) applies to files only
    resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    if case.fsize is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (case.fsize, case.fsize))
    if case.unprivileged and os.geteuid() == 0:  # root writes into a read-only folder anyway
        _drop_dac_override()
    if case.disk_full:
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fsync = fsync
    import torch

    torch.set_num_threads(1)
    from fresnet.errors import FresnetError

    out = {"outcome": "ok", "detail": ""}
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", buffering=0), write_through=True)
    try:
        if case.cli:
            from fresnet.cli import main

            argv = case.run()
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
            out["code"] = code
        else:
            value = case.run()
            out["detail"] = f"returned {type(value).__name__}"
    except FresnetError as exc:
        out = {"outcome": "clean", "detail": str(exc)[:300]}
    except OSError as exc:
        named = exc.filename is not None or "/" in str(exc)
        out = {"outcome": "clean" if named else "traceback", "detail": f"{type(exc).__name__}: {exc}"[:300]}
        if _memory_error(exc):
            out["outcome"] = "memory"
    except BaseException as exc:  # classifying is the point
        out = {"outcome": "memory" if _memory_error(exc) else "traceback",
               "detail": f"{type(exc).__name__}: {str(exc)[:250]}"}
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(result_fd, json.dumps(out).encode())
    os.close(result_fd)
    os._exit(0)


def run_case(case: Case, workdir: Path, as_limit: int, rss_limit: int) -> Result:
    result_read, result_write = os.pipe()
    log_read, log_write = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(result_read)
            os.close(log_read)
            _child(case, result_write, log_write, as_limit)
        finally:
            os._exit(70)
    os.close(result_write)
    os.close(log_write)
    for fd in (result_read, log_read):
        os.set_blocking(fd, False)
    chunks: dict[int, list[bytes]] = {result_read: [], log_read: []}

    def drain() -> None:
        for fd, parts in chunks.items():
            with contextlib.suppress(BlockingIOError):
                while True:
                    data = os.read(fd, 1 << 16)
                    if not data:
                        break
                    parts.append(data)

    deadline = start + case.timeout
    status, usage, killed = None, None, False
    while True:
        drain()
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            killed = True
            break
        time.sleep(0.02)
    drain()
    os.close(result_read)
    os.close(log_read)
    seconds = time.monotonic() - start
    peak = usage.ru_maxrss * 1024 if usage else 0
    log = b"".join(chunks[log_read]).decode(errors="replace")
    result_text = b"".join(chunks[result_read]).decode(errors="replace")
    if killed:
        outcome, detail = "hang", f"still running after {case.timeout:.0f} s"
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        outcome = "memory" if sig == signal.SIGKILL else "traceback"
        detail = f"killed by signal {sig}"
    else:
        try:
            data = json.loads(result_text)
        except json.JSONDecodeError:
            data = {"outcome": "traceback", "detail": f"child exited {os.WEXITSTATUS(status)} without a result"}
        outcome, detail = data["outcome"], data.get("detail", "")
        if case.cli and outcome == "ok":
            outcome, detail = _classify_cli(data.get("code"), log)
    if outcome in ("ok", "clean") and peak > rss_limit:
        outcome, detail = "memory", f"peak RSS {peak / GiB:.2f} GiB ({detail[:120]})"
    if outcome == "ok":
        if case.expect == "error":
            outcome = "accepted-invalid"
        elif case.check is not None:
            reason = case.check()
            if reason:
                outcome, detail = "accepted-invalid", reason
    elif outcome == "clean" and case.expect == "ok":
        outcome = "refused-valid"
    return Result(case.surface, case.name, case.klass, outcome, detail.replace("\n", " ")[:300], round(seconds, 2),
                  round(peak / (1 << 20), 1))


def _classify_cli(code: Any, log: str) -> tuple[str, str]:
    last = [line for line in log.strip().splitlines() if line.strip()][-1:] or [""]
    if "Traceback (most recent call last)" in log:
        lines = [line for line in log.splitlines() if line.strip()]
        return "traceback", lines[-1][:300] if lines else "traceback"
    if code == 0:
        return "ok", last[0][:300]
    if code == 2 and ("error:" in log):
        return "clean", last[0][:300]
    return "traceback", f"exit code {code}: {last[0][:280]}"


# ---------------------------------------------------------------------------------------------------
# fixtures: small, valid files of every format (built once per campaign)

TINY_NET = dict(units=[1, 1, 1, 1], filter_list=[8, 8, 16, 16, 16], input_size=[32, 32], emb_size=16, net_output="E")


class Fixtures:
    def __init__(self, root: Path):
        import numpy as np
        import torch

        import fresnet
        from fresnet.data.decode import encode_jpeg
        from fresnet.data.verification_bin import save_bin
        from fresnet.interop.arcface_torch import export_arcface_torch

        self.root = root
        _remove_tree(root)
        root.mkdir(parents=True)
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        self.model = fresnet.create_model("r18", **TINY_NET).eval()
        self.safetensors = root / "tiny.safetensors"
        fresnet.save(self.model, self.safetensors)
        self.pth = root / "tiny.pth"
        export_arcface_torch(self.model, self.pth)
        self.mx_prefix = root / "mx" / "tiny"
        fresnet.save_mxnet(self.model, self.mx_prefix)
        self.symbol = Path(f"{self.mx_prefix}-symbol.json")
        self.params = Path(f"{self.mx_prefix}-0000.params")
        # images
        self.images_dir = root / "faces"
        self.jpegs = []
        for identity in range(4):
            folder = self.images_dir / f"id{identity}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(3):
                image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                path = folder / f"{k}.jpg"
                path.write_bytes(encode_jpeg(image))
                self.jpegs.append(path)
        self.jpeg_bytes = self.jpegs[0].read_bytes()
        self.face_jpeg = encode_jpeg(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))  # a full-size face crop
        # a verification pack
        self.bin = root / "pairs.bin"
        save_bin(self.bin, [p.read_bytes() for p in self.jpegs[:8]], [True, False, True, False])
        # a RecordIO set
        from fresnet.data.recordio.writer import pack_images

        items = [(p, i // 3) for i, p in enumerate(self.jpegs)]
        self.rec_dir = root / "rec"
        pack_images(items, self.rec_dir / "train", image_size=(24, 24))
        # a pairs list, an image list
        self.pairs_txt = root / "pairs.txt"
        self.pairs_txt.write_text("".join(f"{a} {b} {int(i % 2 == 0)}\n" for i, (a, b) in
                                          enumerate(zip(self.jpegs[0:8:2], self.jpegs[1:8:2]))))
        self.list_txt = root / "images.lst"
        self.list_txt.write_text("".join(f"{p}\t{i // 3}\n" for i, p in enumerate(self.jpegs)))
        # a training run with a checkpoint
        self.train_out = root / "run"
        self.train_cfg = dict(
            network="r18", net=dict(units=[1, 1, 1, 1], filter_list=[8, 8, 16, 16, 32], input_size=[16, 16],
                                    emb_size=32, net_output="E"),
            loss="arcface", loss_s=16.0, dataset="synthetic",
            synthetic=dict(num_identities=12, images_per_identity=6, holdout_identities=8, seed=3),
            output=str(self.train_out), max_steps=4, batch_size=16, lr=0.05, log_every=1, progress=False,
            seed=5, checkpoint_every=2,
        )
        fresnet.train.run(dict(self.train_cfg))
        import yaml

        self.train_yaml = root / "train.yaml"
        cfg = dict(self.train_cfg, max_steps=2, output=str(root / "run-yaml"))
        self.train_yaml.write_text(yaml.safe_dump(cfg))
        # special files
        self.fifo = root / "a.fifo"
        os.mkfifo(self.fifo)
        self.readonly = root / "readonly"
        self.readonly.mkdir()
        os.chmod(self.readonly, 0o555)
        self.a_file = root / "plain-file"
        self.a_file.write_text("not a folder\n")

    def scratch(self, name: str) -> Path:
        """A fresh folder for one case."""
        path = self.root / "cases" / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def link(self, folder: Path, name: str, target: str) -> Path:
        path = folder / name
        os.symlink(target, path)
        return path


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for sub in path.rglob("*"):  # the read-only folder would stop rmtree
        with contextlib.suppress(OSError):
            if sub.is_dir() and not sub.is_symlink():
                os.chmod(sub, 0o755)
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# crafting helpers


def png_bytes(width: int, height: int, rows: Optional[bytes] = None) -> bytes:
    """An RGB PNG whose IDAT is zlib-compressed zeros (streamed: large images cost little to craft)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    body = []
    for _ in range(height):
        body.append(comp.compress(row))
    body.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b"")


def mutations(data: bytes, count: int, seed: int) -> list[tuple[str, bytes]]:
    """Truncations, byte flips, duplicated and oversized fields of ``data``."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        kind = ("truncate", "flip", "flip8", "duplicate", "zero", "max")[i % 6]
        b = bytearray(data)
        if kind == "truncate":
            b = b[: rng.randrange(0, len(b))]
        elif kind in ("flip", "flip8"):
            for _ in range(1 if kind == "flip" else 8):
                pos = rng.randrange(len(b))
                b[pos] ^= 1 << rng.randrange(8)
        elif kind == "duplicate":
            a = rng.randrange(len(b))
            n = rng.randrange(1, min(4096, len(b) - a) + 1)
            b[a:a] = b[a:a + n] * rng.randrange(2, 6)
        elif kind == "zero":
            a, n = rng.randrange(len(b)), rng.randrange(1, 64)
            b[a:a + n] = bytes(len(b[a:a + n]))
        else:  # an aligned word set to a huge value (lengths, counts, dims)
            pos = rng.randrange(0, max(1, len(b) - 8)) & ~3
            b[pos:pos + 8] = rng.choice([b"\xff" * 8, struct.pack("<Q", 1 << 40), struct.pack("<I", 0x7FFFFFFF) * 2])
        out.append((f"{kind}{i}", bytes(b)))
    return out


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------------------------------------------
# the cases, surface by surface


def bin_cases(fx: Fixtures, n_mut: int) -> list[Case]:
    from fresnet.data.verification_bin import load_bin, read_bin

    cases: list[Case] = []
    d = fx.scratch("bin")
    load = lambda p, size=(32, 32): (lambda: load_bin(p, image_size=size))

    def add(name, klass, data=None, path=None, expect="error", size=(32, 32), timeout=30.0):
        p = path if path is not None else write(d, f"{name}.bin", data)
        cases.append(Case("bin", name, klass, load(p, size), expect, timeout=timeout))
        return p

    img = fx.jpeg_bytes
    add("valid", "safe", fx.bin.read_bytes(), expect="ok")
    # 1. sizes: one image referenced many times (pickle memo), huge declared dimensions
    bomb = pickle.dumps(([fx.face_jpeg] * 40000, [True, False] * 10000), protocol=4)
    add("memo-shared-images", "sizes", bomb)
    add("memo-shared-images-nosize", "sizes", bomb, size=None)
    big = png_bytes(11000, 11000)
    add("huge-png-x4-nosize", "sizes", pickle.dumps(([big] * 2 + [bytes(big)[:] + b""] * 2, [True, True]), protocol=4),
        size=None)
    distinct_big = [big + bytes([i]) for i in range(4)]  # distinct objects: no memo sharing
    add("huge-png-distinct", "sizes", pickle.dumps((distinct_big, [True, False]), protocol=4), size=None)
    arr_bomb = (b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00"  # protocol 4 frame
                b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nJ\x00\x00\x00\x00\x85C\x01b\x87R"
                b"(K\x01\x8a\x05\x00\x00\x00\x00\x01\x85cnumpy\ndtype\nX\x02\x00\x00\x00u1K\x00K\x01\x87R"
                b"(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x89C\x00tb.")
    add("ndarray-declared-huge", "sizes", arr_bomb)
    # 2. values and types
    add("issame-2", "values", pickle.dumps(([img, img], [2]), protocol=4))
    outer = pickle.dumps(([img, img], ["PLACEHOLDER"]), protocol=2)
    deep = b"]" * 50000 + b"a" * 49999  # 50000 nested empty lists, built without recursion
    add("issame-deep-list", "values", outer.replace(b"X\x0b\x00\x00\x00PLACEHOLDER", deep))
    add("issame-huge-int", "values", pickle.dumps(([img, img], [10 ** 20000]), protocol=4))
    add("issame-nan", "values", pickle.dumps(([img, img], [float("nan")]), protocol=4))
    add("not-a-pair", "values", pickle.dumps({"a": 1}, protocol=4))
    add("images-odd", "values", pickle.dumps(([img] * 3, [True]), protocol=4))
    add("empty-lists", "values", pickle.dumps(([], []), protocol=4))
    add("entry-int", "values", pickle.dumps(([1, 2], [True]), protocol=4))
    add("entry-not-image", "values", pickle.dumps(([b"hello", b"world"], [True]), protocol=4))
    add("global-os-system", "values", b"cos\nsystem\n(S'echo pwned'\ntR.")
    add("global-eval", "values", b"cbuiltins\neval\n(S'1+1'\ntR.")
    add("persistent-id", "values", b"\x80\x02Pfoo\n.")
    # 3. filesystem
    add("dev-zero", "filesystem", path=fx.link(d, "zero.bin", "/dev/zero"), timeout=20)
    add("fifo", "filesystem", path=fx.fifo, timeout=20)
    add("directory", "filesystem", path=d)
    add("missing", "filesystem", path=d / "missing.bin")
    add("empty", "filesystem", b"")
    # 4. silently accepted invalid data
    one = [img] * 2
    add("all-same-bytes-objects", "invalid-data", pickle.dumps((one * 20, [True] * 20), protocol=4))
    # mutations
    good = fx.bin.read_bytes()
    for name, data in mutations(good, n_mut, 1):
        add(f"mut-{name}", "mutation", data, expect="any")
    cases.append(Case("bin", "read_bin-memo", "sizes", lambda: read_bin(d / "memo-shared-images.bin")))
    return cases


def recordio_cases(fx: Fixtures, n_mut: int) -> list[Case]:
    from fresnet.data.recordio.dataset import RecordIODataset
    from fresnet.data.recordio.format import frame_record, pack_record

    cases: list[Case] = []
    base_rec = (fx.rec_dir / "train.rec").read_bytes()
    base_idx = (fx.rec_dir / "train.idx").read_text()
    base_prop = (fx.rec_dir / "property").read_text()

    def read_all(folder):
        def go():
            ds = RecordIODataset(folder)
            return [ds[i] for i in range(min(len(ds), 64))]
        return go

    def add(name, klass, rec=None, idx=None, prop=None, expect="error", remove_idx=False, timeout=30.0, check=None):
        d = fx.scratch(f"rec-{name}")
        (d / "train.rec").write_bytes(base_rec if rec is None else rec)
        if not remove_idx:
            (d / "train.idx").write_text(base_idx if idx is None else idx)
        (d / "property").write_text(base_prop if prop is None else prop)
        cases.append(Case("recordio", name, klass, read_all(d), expect, timeout=timeout, check=check))
        return d

    add("valid", "safe", expect="ok")
    idx_lines = [line.split("\t") for line in base_idx.strip().splitlines()]
    offsets = {int(k): int(o) for k, o in idx_lines}
    n_images = 12

    def records_with(header_labels=None, identity=None, image_label=None):
        """Rebuild the .rec with record 0 / one identity record / one image record replaced."""
        out, idx = bytearray(), []
        from fresnet.data.recordio.format import RecFile

        rec_path = fx.rec_dir / "train.rec"
        rf = RecFile(rec_path)
        for key, offset in sorted(offsets.items(), key=lambda kv: kv[1]):
            payload, _ = rf.read(offset, "fixture")
            if key == 0 and header_labels is not None:
                payload = pack_record(header_labels, b"", id=0, id2=1)
            elif identity is not None and key == n_images + 1:
                payload = pack_record(identity, b"", id=key)
            elif image_label is not None and key == 1:
                payload = struct.pack("<IfQQ", 0, image_label, 1, 0) + payload[24:]
            idx.append(f"{key}\t{len(out)}\n")
            out += frame_record(payload)
        rf.close()
        return bytes(out), "".join(idx)

    # 1. sizes trusted
    for name, labels in [("header-range-2^40", [13.0, float(1 << 40)]), ("header-range-1e30", [13.0, 1e30])]:
        rec, idx = records_with(header_labels=labels)
        add(name, "sizes", rec, idx, timeout=20)
    for name, ident in [("identity-range-2^40", [1.0, float(1 << 40)]), ("identity-range-1e12", [1.0, 1e12])]:
        rec, idx = records_with(identity=ident)
        add(name, "sizes", rec, idx, timeout=20)
    lines = "".join(f"{k}\t{10 ** 12 + k}\n" for k in range(300000))
    add("idx-300k-lines-past-end", "sizes", idx=lines)
    add("record-length-max", "sizes", rec=struct.pack("<II", 0xCED7230A, (1 << 29) - 1) + b"\0" * 64,
        idx="0\t0\n")
    # 2. values
    for name, labels in [("header-nan", [float("nan"), 20.0]), ("header-inf", [13.0, float("inf")]),
                         ("header-negative", [-5.0, 20.0]), ("header-reversed", [20.0, 13.0])]:
        rec, idx = records_with(header_labels=labels)
        add(name, "values", rec, idx)
    for name, ident in [("identity-nan", [float("nan"), 3.0]), ("identity-inf", [1.0, float("inf")])]:
        rec, idx = records_with(identity=ident)
        add(name, "values", rec, idx)
    for name, label in [("label-nan", float("nan")), ("label-inf", float("inf")), ("label-1e30", 1e30),
                        ("label-negative", -3.0), ("label-fraction", 0.5)]:
        rec, idx = records_with(image_label=label)
        add(name, "values", rec, idx, remove_idx=False)
    add("property-text", "values", prop="ten,112,112")
    add("property-1e30", "values", prop="1e30,112,112")
    add("idx-garbage", "values", idx="hello world\n")
    add("idx-float-offset", "values", idx="0\t0.5\n")
    # 3. filesystem
    d = add("rec-fifo", "filesystem")
    (d / "train.rec").unlink()
    os.mkfifo(d / "train.rec")
    d = add("idx-dev-zero", "filesystem", timeout=20)
    (d / "train.idx").unlink()
    os.symlink("/dev/zero", d / "train.idx")
    d = add("property-dev-zero", "filesystem", timeout=20)
    (d / "property").unlink()
    os.symlink("/dev/zero", d / "property")
    d = add("idx-fifo", "filesystem", timeout=20)
    (d / "train.idx").unlink()
    os.mkfifo(d / "train.idx")
    # 4. silently accepted invalid data
    first = offsets[1]
    add("idx-one-offset", "invalid-data", idx="".join(f"{k}\t{first}\n" for k in range(1, 14)))
    add("idx-duplicate-keys", "invalid-data", idx=base_idx + f"1\t{offsets[2]}\n")
    add("property-negative", "invalid-data", prop="-4,-24,-24")
    add("property-zero-classes", "invalid-data", prop="0,24,24")
    rec, idx = records_with(identity=[1.0, 5.0])  # overlaps the next identity's images
    add("identity-overlap", "invalid-data", rec, idx)
    # mutations
    for name, data in mutations(base_rec, n_mut, 2):
        add(f"mut-rec-{name}", "mutation", rec=data, expect="any")
    for name, data in mutations(base_idx.encode(), max(2, n_mut // 3), 3):
        add(f"mut-idx-{name}", "mutation", idx=data.decode("latin1"), expect="any")
    return cases


def mxnet_cases(fx: Fixtures, n_mut: int) -> list[Case]:
    from fresnet.interop.mxnet import load_mxnet

    cases: list[Case] = []
    sym = json.loads(fx.symbol.read_text())
    params = fx.params.read_bytes()

    def add(name, klass, symbol=None, params_bytes=None, expect="error", timeout=30.0, sym_path=None, par_path=None):
        d = fx.scratch(f"mx-{name}")
        prefix = d / "model"
        if sym_path is None:
            text = symbol if isinstance(symbol, str) else json.dumps(symbol if symbol is not None else sym)
            Path(f"{prefix}-symbol.json").write_text(text)
        else:
            os.symlink(sym_path, f"{prefix}-symbol.json")
        if par_path is None:
            Path(f"{prefix}-0000.params").write_bytes(params if params_bytes is None else params_bytes)
        else:
            os.symlink(par_path, f"{prefix}-0000.params")
        cases.append(Case("mxnet", name, klass, lambda: load_mxnet(prefix), expect, timeout=timeout))

    def edited(fn):
        s = json.loads(json.dumps(sym))
        fn(s)
        return s

    def set_attr(s, node_name, key, value):
        for node in s["nodes"]:
            if node["name"] == node_name:
                node.setdefault("attrs", {})[key] = value

    add("valid", "safe", expect="ok")
    # 1. sizes
    add("data-shape-huge", "sizes", edited(lambda s: set_attr(s, "data", "__shape__", "(1, 3, 1000000, 1000000)")))
    add("conv0-filters-1e6", "sizes", edited(lambda s: set_attr(s, "conv0", "num_filter", "1000000")))
    add("emb-1e9", "sizes", edited(lambda s: set_attr(s, "pre_fc1", "num_hidden", "1000000000")))

    def many_units(s):
        for node in s["nodes"]:
            if node["name"].startswith("stage4_unit1_"):
                node["name"] = node["name"].replace("stage4_unit1_", "stage4_unit10000000_")
    add("units-1e7", "sizes", edited(many_units), timeout=30)

    def overflow_params():
        out = io.BytesIO()
        out.write(struct.pack("<QQQ", 0x112, 0, 1))
        out.write(struct.pack("<Ii", 0xF993FAC9, 0))
        out.write(struct.pack("<i3q", 3, 1 << 32, 1 << 32, 4))
        out.write(struct.pack("<iii", 1, 0, 0))
        out.write(b"\0" * 64)
        out.write(struct.pack("<Q", 1) + struct.pack("<Q", 11) + b"arg:conv0_w")
        return out.getvalue()
    add("params-dims-overflow", "sizes", params_bytes=overflow_params())

    def big_count():
        return struct.pack("<QQQ", 0x112, 0, 1 << 60) + b"\0" * 32
    add("params-count-2^60", "sizes", params_bytes=big_count())
    # 2. values
    deep = "[" * 100000 + "]" * 100000
    add("symbol-deep-json", "values", '{"nodes": [], "heads": ' + deep + "}")
    add(
        "symbol-deep-attr",
        "values",
        edited(lambda s: set_attr(s, "conv0", "kernel", json.loads("[" * 900 + "]" * 900))),
    )
    add("conv0-filters-0", "values", edited(lambda s: set_attr(s, "conv0", "num_filter", "0")))
    add("stage1-filters-0", "values", edited(lambda s: set_attr(s, "stage1_unit1_conv1sc", "num_filter", "0")))
    add("bn-momentum-nan", "values", edited(lambda s: set_attr(s, "bn0", "momentum", "nan")))
    add("bn-momentum-text", "values", edited(lambda s: set_attr(s, "bn0", "momentum", "fast")))
    add("emb-text", "values", edited(lambda s: set_attr(s, "pre_fc1", "num_hidden", "many")))
    add("emb-negative", "values", edited(lambda s: set_attr(s, "pre_fc1", "num_hidden", "-16")))
    add("nodes-not-list", "values", '{"nodes": 5, "heads": []}')
    add("input-index-huge", "values", edited(lambda s: s["nodes"][3].__setitem__("inputs", [[10 ** 30, 0, 0]])))
    add("heads-text", "values", edited(lambda s: s.__setitem__("heads", "x")))
    # 3. filesystem
    add("symbol-dev-zero", "filesystem", sym_path="/dev/zero", timeout=20)
    add("params-dev-zero", "filesystem", par_path="/dev/zero", timeout=20)
    add("symbol-fifo", "filesystem", sym_path=str(fx.fifo), timeout=20)
    add("params-fifo", "filesystem", par_path=str(fx.fifo), timeout=20)
    # mutations
    for name, data in mutations(params, n_mut, 4):
        add(f"mut-params-{name}", "mutation", params_bytes=data, expect="any")
    for name, data in mutations(fx.symbol.read_bytes(), n_mut, 5):
        add(f"mut-symbol-{name}", "mutation", data.decode("latin1"), expect="any")
    return cases


def weights_cases(fx: Fixtures, n_mut: int) -> list[Case]:
    import torch
    from safetensors.torch import load_file
    from safetensors.torch import save as st_save

    import fresnet
    from fresnet.interop.arcface_torch import load_arcface_torch

    cases: list[Case] = []
    tensors = load_file(str(fx.safetensors))
    config = json.loads(fresnet.interop.native.read_metadata(fx.safetensors)["config"])
    pth_state = torch.load(fx.pth, weights_only=True)
    d = fx.scratch("weights")

    def add_st(name, klass, cfg=None, tens=None, meta=None, raw=None, expect="error", path=None, timeout=30.0):
        p = path or d / f"{name}.safetensors"
        if path is None:
            if raw is not None:
                p.write_bytes(raw)
            else:
                header = {"format": "fresnet", "format_version": "1",
                          "config": cfg if isinstance(cfg, str) else json.dumps(cfg if cfg is not None else config)}
                header.update(meta or {})
                p.write_bytes(st_save(tens if tens is not None else tensors, metadata=header))
        cases.append(Case("safetensors/pth", f"st-{name}", klass, lambda: fresnet.load(p), expect, timeout=timeout))

    def add_pth(name, klass, state=None, raw=None, expect="error", path=None, timeout=30.0):
        p = path or d / f"{name}.pth"
        if path is None:
            if raw is not None:
                p.write_bytes(raw)
            else:
                torch.save(state, p)
        cases.append(Case("safetensors/pth", f"pth-{name}", klass, lambda: load_arcface_torch(p), expect,
                          timeout=timeout))

    add_st("valid", "safe", expect="ok")
    add_pth("valid", "safe", pth_state, expect="ok")
    # 1. sizes
    add_st("config-emb-1e9", "sizes", dict(config, emb_size=10 ** 9))
    add_st("config-emb-4e7", "sizes", dict(config, emb_size=4 * 10 ** 7))
    add_st("config-units-1e7", "sizes", dict(config, units=[1, 1, 1, 10 ** 7]))
    add_st("config-filters-1e6", "sizes", dict(config, filter_list=[8, 8, 16, 16, 10 ** 6]))
    add_st("config-input-1e5", "sizes", dict(config, input_size=[100000, 100000], net_output="GAP"))
    stride0 = dict(pth_state)
    stride0["fc.weight"] = torch.zeros(1).expand(16, 16 * 4096 * 4096)
    add_pth("stride0-fc", "sizes", stride0)
    wide = dict(pth_state)
    wide["layer4.0.conv1.weight"] = torch.zeros(1).expand(1 << 20, 16, 3, 3)
    add_pth("stride0-width", "sizes", wide)
    # 2. values
    for key, value in [("emb_size", "sixteen"), ("emb_size", 16.5), ("emb_size", 0), ("emb_size", -16),
                       ("units", ["a", 1, 1, 1]), ("units", [0, 1, 1, 1]), ("filter_list", [8, 0, 16, 16, 16]),
                       ("filter_list", [8, -8, 16, 16, 16]), ("input_size", [0, 0]), ("input_size", "big"),
                       ("bn_mom", "fast"), ("bn_mom", float("nan")), ("net_input", "x"), ("net_se", "maybe"),
                       ("num_layers", "fifty"), ("num_layers", 1e300), ("net_unit", [3]), ("bottle_neck", "sure"),
                       ("net_act", {"a": 1})]:
        add_st(f"config-{key}-{str(value)[:12]}", "values", dict(config, **{key: value}))
    add_st("config-list", "values", "[1, 2, 3]")
    add_st("config-deep", "values", "[" * 100000 + "]" * 100000)
    add_st("config-not-json", "values", "{oops")
    add_st("format-version-9", "values", meta={"format_version": "9"})
    zero_width = dict(pth_state)
    zero_width["conv1.weight"] = torch.zeros(0, 3, 3, 3)
    add_pth("zero-width", "values", zero_width)
    add_pth("not-a-dict", "values", [1, 2, 3])
    add_pth("text-values", "values", {"conv1.weight": "abc"})
    add_pth("malicious", "values", raw=b"cos\nsystem\n(S'echo pwned'\ntR.")
    # 3. filesystem
    add_st("dev-zero", "filesystem", path=fx.link(d, "zero.safetensors", "/dev/zero"), timeout=20)
    add_pth("dev-zero", "filesystem", path=fx.link(d, "zero.pth", "/dev/zero"), timeout=20)
    fifo_st = d / "pipe.safetensors"
    os.mkfifo(fifo_st)
    add_st("fifo", "filesystem", path=fifo_st, timeout=20)
    fifo_pth = d / "pipe.pth"
    os.mkfifo(fifo_pth)
    add_pth("fifo", "filesystem", path=fifo_pth, timeout=20)
    # 4. invalid data accepted
    ints = {k: (v * 100).to(torch.int32) for k, v in tensors.items()}
    add_st("int32-weights", "invalid-data", tens=ints)
    add_pth("int32-weights", "invalid-data", {k: (v * 100).to(torch.int32) if v.is_floating_point() else v
                                              for k, v in pth_state.items()})
    # mutations
    for name, data in mutations(fx.safetensors.read_bytes()[:4096], n_mut, 6):
        add_st(f"mut-head-{name}", "mutation", raw=data + fx.safetensors.read_bytes()[4096:], expect="any")
    for name, data in mutations(fx.pth.read_bytes(), n_mut, 7):
        add_pth(f"mut-{name}", "mutation", raw=data, expect="any")
    return cases


def train_cases(fx: Fixtures, n_mut: int) -> list[Case]:
    import torch
    import yaml

    import fresnet.train

    cases: list[Case] = []
    base = dict(fx.train_cfg)

    def add(name, klass, text=None, cfg=None, overrides=None, expect="error", timeout=90.0, prepare=None, check=None,
            resume=False, fsize=None):
        d = fx.scratch(f"train-{name}")
        out = d / "run"
        if prepare is not None:
            prepare(d, out)
        if text is not None:
            cfg_path = d / "config.yaml"
            if isinstance(text, str):
                text = text.replace("RUN_DIR", str(out))
            if isinstance(text, bytes):
                cfg_path.write_bytes(text)
            else:
                cfg_path.write_text(text)
            source: Any = cfg_path
        else:
            source = {**base, "output": str(out), **(cfg or {})}
            if resume:
                source["resume"] = True
        ov = list(overrides or [])
        cases.append(Case("train", name, klass, lambda: fresnet.train.run(source, **_kv(ov)) if not isinstance(
            source, Path) else fresnet.train.run(str(source)), expect, timeout=timeout, check=check, fsize=fsize,
            unprivileged="readonly" in name))

    def _kv(items):
        return dict(item.split("=", 1) for item in items)

    def copy_run(d, out):
        shutil.copytree(fx.train_out, out)

    def with_checkpoint(edit):
        def prepare(d, out):
            copy_run(d, out)
            path = out / "checkpoint.pt"
            state = torch.load(path, weights_only=True)
            edit(state)
            torch.save(state, path)
        return prepare

    add("valid", "safe", cfg={"max_steps": 2}, expect="ok")
    add("valid-resume", "safe", cfg={"max_steps": 6}, prepare=copy_run, resume=True, expect="ok")
    # 1. sizes
    add("emb-1e9", "sizes", cfg={"net": dict(base["net"], emb_size=10 ** 9)})
    add("units-1e7", "sizes", cfg={"net": dict(base["net"], units=[1, 1, 1, 10 ** 7])})
    add("identities-1e9", "sizes", cfg={"synthetic": dict(base["synthetic"], num_identities=10 ** 9)}, timeout=60)
    # a 9^9 alias bomb in a key nothing reads before the first checkpoint copies the config
    chain = ["&a [x, x, x, x, x, x, x, x, x]"] + [f"&{c} [" + ", ".join([f"*{p}"] * 9) + "]"
                                               for p, c in zip("abcdefgh", "bcdefghi")]
    bomb_cfg = yaml.safe_dump(dict(base, max_steps=2, checkpoint_every=1, output="RUN_DIR"))
    bomb_text = bomb_cfg.replace("rand_mirror: true\n", "") + "rand_mirror: [" + ", ".join(chain) + "]\n"
    add("yaml-alias-bomb", "sizes", text=bomb_text, timeout=60)
    # 2. values
    for key, value in [("lr", "fast"), ("lr", float("nan")), ("batch_size", "many"), ("batch_size", 0),
                       ("max_steps", float("inf")), ("max_steps", 1e30), ("max_steps", "ten"),
                       ("warmup_steps", "x"), ("sample_rate", "half"), ("lr_steps", ["a"]), ("net", 5),
                       ("synthetic", "x"), ("val_targets", 5), ("momentum", float("inf")), ("seed", "x"),
                       ("log_every", -1), ("loss_s", "big"), ("clip_grad_norm", float("nan"))]:
        add(f"{key}-{str(value)[:10]}", "values", cfg={key: value})
    deep = "a: " + "[" * 5000 + "]" * 5000 + "\n"
    add("yaml-deep", "values", text=deep)
    add("yaml-python-tag", "values", text="network: !!python/object/apply:os.system ['echo pwned']\n")
    add("yaml-not-mapping", "values", text="- 1\n- 2\n")
    for edit_name, edit in [("step-negative", lambda s: s.__setitem__("step", -5)),
                            ("step-text", lambda s: s.__setitem__("step", "two")),
                            ("step-float", lambda s: s.__setitem__("step", 2.5)),
                            ("no-model", lambda s: s.pop("model")),
                            ("model-shapes", lambda s: s["model"].__setitem__(
                                "stem.conv0.weight", torch.zeros(3, 3, 3, 3))),
                            ("fc-not-tensor", lambda s: s.__setitem__("fc", {"weight": "x"})),
                            ("rng-missing", lambda s: s.pop("rng")),
                            ("elapsed-nan", lambda s: s.__setitem__("elapsed_s", float("nan"))),
                            ("world-size-0", lambda s: s.__setitem__("world_size", 0))]:
        add(f"resume-{edit_name}", "values" if edit_name != "step-negative" else "invalid-data",
            cfg={"max_steps": 6}, prepare=with_checkpoint(edit), resume=True)
    # 3. filesystem
    add("output-is-file", "filesystem", cfg={"output": str(fx.a_file / "run")})
    add("output-readonly", "filesystem", cfg={"output": str(fx.readonly / "run")})
    add("output-file-itself", "filesystem", cfg={"output": str(fx.a_file)})
    add("file-size-limit", "filesystem", cfg={"max_steps": 2}, fsize=4096)

    d = fx.scratch("train-config-fifo")
    os.mkfifo(d / "config.yaml")
    cases.append(Case("train", "config-fifo", "filesystem", lambda: fresnet.train.run(str(d / "config.yaml")),
                      timeout=20))
    d2 = fx.scratch("train-config-dev-zero")
    os.symlink("/dev/zero", d2 / "config.yaml")
    cases.append(Case("train", "config-dev-zero", "filesystem", lambda: fresnet.train.run(str(d2 / "config.yaml")),
                      timeout=20))
    add("dataset-fifo", "filesystem", cfg={"dataset": str(fx.fifo)}, timeout=20)

    def orphan(d, out):
        copy_run(d, out)
        (out / ".log.csv.abc123.tmp").write_text("half a row")

    def orphan_left(out_dir):
        return lambda: "orphaned .log.csv.*.tmp left after resume" if list(out_dir.glob(".*.tmp")) else None
    d3 = fx.scratch("train-orphan-tmp")
    out3 = d3 / "run"
    orphan(d3, out3)
    cases.append(Case("train", "resume-orphan-tmp", "filesystem",
                      lambda: fresnet.train.run(dict(base, output=str(out3), max_steps=6, resume=True)), "ok",
                      timeout=90, check=orphan_left(out3)))
    # mutations of the YAML: loaded and validated (a mutation may still be a valid config for a long run)
    good = fx.train_yaml.read_bytes()
    d = fx.scratch("train-mutations")
    for name, data in mutations(good, max(2, n_mut // 2), 8):
        path = write(d, f"{name}.yaml", data)
        cases.append(Case("train", f"mut-yaml-{name}", "mutation",
                          lambda path=path: fresnet.train.load_config(str(path)).net_config(), "any", timeout=30))
    return cases


def cli_cases(fx: Fixtures, n_mut: int) -> list[Case]:
    cases: list[Case] = []
    model = str(fx.safetensors)

    def add(name, klass, argv, expect="error", timeout=60.0, fsize=None, prepare=None):
        d = fx.scratch(f"cli-{name}")
        if prepare is not None:
            prepare(d)
        args = [a.replace("{d}", str(d)) for a in argv]
        cases.append(Case("cli", name, klass, lambda: args, expect, cli=True, timeout=timeout, fsize=fsize,
                          unprivileged="readonly" in name, disk_full="disk-full" in name))

    add("summary-valid", "safe", ["summary", "r18", "--set", "units=[1,1,1,1]"], expect="ok")
    # 1. sizes
    for value in ["emb_size=1000000000", "units=[1,1,1,10000000]", "filter_list=[64,64,128,256,10000000]",
                  "input_size=100000x100000", "emb_size=30000000"]:
        add(f"summary-{value[:24]}", "sizes", ["summary", "r18", "--set", value])
    add("synth-size-1e5", "sizes", ["synth", "{d}/out", "--size", "100000", "--identities", "1",
                                    "--images-per-identity", "1", "--holdout", "2", "--pairs", "2"])
    # 2. values
    for value in ["emb_size=0", "emb_size=-5", "emb_size=abc", "emb_size=nan", "input_size=0x0",
                  "units=[0,1,1,1]", "filter_list=[0,64,128,256,512]", "filter_list=[-1,64,128,256,512]",
                  "bn_mom=nan", "net_input=abc", "units=abc", "emb_size=1e400", "emb_size=[[[[[]]]]]"]:
        add(f"summary-{value[:20]}", "values", ["summary", "r18", "--set", value])
    add("embed-batch-0", "values", ["embed", model, str(fx.jpegs[0]), "-o", "{d}/e.npy", "--batch-size", "0"])
    add("embed-batch-neg", "values", ["embed", model, str(fx.jpegs[0]), "-o", "{d}/e.npy", "--batch-size", "-3"])
    add("eval-nfolds-0", "values", ["eval", model, "--bin", str(fx.bin), "--out", "{d}/o", "--nfolds", "0"])
    add("memory-batch-0", "values", ["memory", "r18", "--batch", "0"])
    add("synth-size-0", "values", ["synth", "{d}/out", "--size", "0"])
    add("synth-size-neg", "values", ["synth", "{d}/out", "--size", "-4"])
    add("summary-rows-neg", "values", ["summary", "r18", "--rows", "-3"], expect="any")
    add("compare-threshold-nan", "values", ["compare", model, str(fx.jpegs[0]), str(fx.jpegs[1]), "--threshold", "nan"])
    add("export-opset-0", "values", ["export", model, "{d}/m.onnx", "--opset", "0"])
    add("convert-epoch-neg", "values", ["convert", model, "{d}/m", "--dst-epoch", "-2"])
    add("convert-input-size-0", "values", ["convert", str(fx.pth), "{d}/m.safetensors", "--input-size", "0x0"])
    add("pack-image-size-neg", "invalid-data", ["pack", str(fx.images_dir), "{d}/out", "--image-size", "-5", "-5"])

    def huge_label(d):
        (d / "list.lst").write_text(f"{fx.jpegs[0]}\t1e30\n")
    add("pack-label-1e30", "invalid-data", ["pack", "{d}/list.lst", "{d}/out"], prepare=huge_label)
    # 3. filesystem, every writing command
    ro, pf = str(fx.readonly), str(fx.a_file)
    writers = {
        "convert": lambda o: ["convert", model, f"{o}/m.safetensors"],
        "export": lambda o: ["export", model, f"{o}/m.onnx", "--no-verify"],
        "embed": lambda o: ["embed", model, str(fx.jpegs[0]), "-o", f"{o}/e.npy"],
        "pack": lambda o: ["pack", str(fx.images_dir), f"{o}/out"],
        "make-bin": lambda o: ["make-bin", str(fx.pairs_txt), f"{o}/p.bin"],
        "eval": lambda o: ["eval", model, "--bin", str(fx.bin), "--out", f"{o}/report", "--nfolds", "2"],
        "plot": lambda o: ["plot", "r18", "-o", f"{o}/g.svg"],
        "synth": lambda o: ["synth", f"{o}/s", "--identities", "2", "--images-per-identity", "2", "--holdout", "2",
                            "--pairs", "2", "--size", "32"],
    }
    for command, argv in writers.items():
        add(f"{command}-readonly", "filesystem", argv(ro))
        add(f"{command}-parent-is-file", "filesystem", argv(pf))
        add(f"{command}-file-size-limit", "filesystem", argv("{d}"), fsize=100)
        add(f"{command}-disk-full", "filesystem", argv("{d}"))
    add("train-readonly", "filesystem", ["train", str(fx.train_yaml), f"output={ro}/run"], timeout=90)
    add("train-file-size-limit", "filesystem", ["train", str(fx.train_yaml), "output={d}/run"], fsize=4096,
        timeout=90)
    add("train-disk-full", "filesystem", ["train", str(fx.train_yaml), "output={d}/run"], timeout=90)
    for command, argv in [("convert-src", ["convert", "{d}/in.safetensors", "{d}/m.pth"]),
                          ("embed-input", ["embed", model, "{d}/in.jpg", "-o", "{d}/e.npy"]),
                          ("eval-bin", ["eval", model, "--bin", "{d}/in.bin", "--out", "{d}/o"]),
                          ("make-bin-pairs", ["make-bin", "{d}/in.txt", "{d}/p.bin"]),
                          ("pack-list", ["pack", "{d}/in.lst", "{d}/out"]),
                          ("train-config", ["train", "{d}/in.yaml"])]:
        name = argv[[i for i, a in enumerate(argv) if a.startswith("{d}/in")][0]].split("/")[-1]

        def fifo(d, name=name):
            os.mkfifo(d / name)

        def zero(d, name=name):
            os.symlink("/dev/zero", d / name)
        add(f"{command}-fifo", "filesystem", argv, prepare=fifo, timeout=20)
        add(f"{command}-dev-zero", "filesystem", argv, prepare=zero, timeout=20)
    add("embed-input-dir-named-jpg", "filesystem", ["embed", model, "{d}/x.jpg", "-o", "{d}/e.npy"],
        prepare=lambda d: (d / "x.jpg").mkdir())
    # 5. argument parsing
    add("train-overrides-after-flag", "cli", ["train", str(fx.train_yaml), "max_steps=2", "--no-progress",
                                              "output={d}/run"], expect="ok", timeout=90)
    return cases


# ---------------------------------------------------------------------------------------------------


def build_cases(fx: Fixtures, n_mut: int, surfaces) -> list[Case]:
    makers = {"bin": bin_cases, "recordio": recordio_cases, "mxnet": mxnet_cases,
              "safetensors/pth": weights_cases, "train": train_cases, "cli": cli_cases}
    cases = []
    for surface in surfaces:
        cases.extend(makers[surface](fx, n_mut))
    return cases


def table(results: list[Result]) -> str:
    rows = ["| surface | tried | clean error | valid ok | raw traceback | hang | memory blow-up | accepted invalid "
            "| refused valid |", "|---|---|---|---|---|---|---|---|---|"]
    for surface in list(SURFACES) + ["total"]:
        sel = [r for r in results if surface == "total" or r.surface == surface]
        if not sel:
            continue
        count = {o: sum(r.outcome == o for r in sel) for o in OUTCOMES}
        label = f"**{surface}**" if surface == "total" else surface
        rows.append(f"| {label} | {len(sel)} | {count['clean']} | {count['ok']} | {count['traceback']} | "
                    f"{count['hang']} | {count['memory']} | {count['accepted-invalid']} | {count['refused-valid']} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mutations", type=int, default=24, help="mutated copies per fixture file (default 24)")
    p.add_argument("--surface", action="append", choices=SURFACES, help="only these surfaces (repeatable)")
    p.add_argument("--only", default=None, help="only cases whose name contains this text")
    p.add_argument("--as-limit-gb", type=float, default=4.0, help="RLIMIT_AS per case (default 4 GiB)")
    p.add_argument("--rss-limit-gb", type=float, default=2.0, help="peak RSS counted as a blow-up (default 2 GiB)")
    p.add_argument("--json", default=None, help="write every case's outcome here")
    p.add_argument("--workdir", default=None, help="keep fixtures and case files here (default: a temp folder)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every case")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # the forked children must not inherit a running OpenMP pool
    import fresnet
    import fresnet.train

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fresnet-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"fresnet {fresnet.__version__} from {Path(fresnet.__file__).parent}; workdir {workdir}", flush=True)
    t0 = time.monotonic()
    fx = Fixtures(workdir / "fixtures")
    cases = build_cases(fx, args.mutations, args.surface or SURFACES)
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    print(f"{len(cases)} cases; fixtures in {time.monotonic() - t0:.1f} s", flush=True)
    results = []
    for i, case in enumerate(cases):
        result = run_case(case, workdir, int(args.as_limit_gb * GiB), int(args.rss_limit_gb * GiB))
        results.append(result)
        bad = result.outcome not in ("clean", "ok")
        if args.verbose or bad:
            print(f"[{i + 1}/{len(cases)}] {case.surface:15s} {case.name:38s} {result.outcome:16s} "
                  f"{result.seconds:6.1f}s {result.peak_rss_mb:7.0f}MB  {result.detail[:150]}", flush=True)
    print()
    print(table(results))
    peak = max(r.peak_rss_mb for r in results)
    escaped = sum(r.outcome in ("traceback", "hang", "memory", "accepted-invalid", "refused-valid") for r in results)
    print(f"\ncases {len(results)}, not clean {escaped}, peak RSS {peak:.0f} MB, "
          f"{time.monotonic() - t0:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": [r.__dict__ for r in results], "peak_rss_mb": peak},
                                              indent=1))
    if not args.workdir:
        _remove_tree(workdir)
    return 0 if escaped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
