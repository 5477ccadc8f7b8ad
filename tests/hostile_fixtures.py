"""Small valid files of every format, and the tools to damage them, for the hostile-input tests
(``test_hostile_inputs.py``, ``test_fuzz.py``). The long campaign is ``benchmarks/fuzz_campaign.py``."""
from __future__ import annotations

import functools
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

TINY = dict(units=[1, 1, 1, 1], filter_list=[8, 8, 16, 16, 16], input_size=[32, 32], emb_size=16, net_output="E")


def tiny_model():
    import fresnet

    torch.manual_seed(0)
    return fresnet.create_model("r18", **TINY).eval()


def jpeg(seed: int = 0, size: int = 24) -> bytes:
    from fresnet.data.decode import encode_jpeg

    rng = np.random.default_rng(seed)
    return encode_jpeg(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


@functools.lru_cache(maxsize=4)
def png_bytes(width: int, height: int, level: int = 6) -> bytes:
    """An RGB PNG of zeros whose IDAT is compressed row by row: gigapixels cost kilobytes of file
    (``level`` 1 crafts fastest, 6 and up compress zeros about 1000:1)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(level)
    row = b"\0" * (1 + 3 * width)
    body = [comp.compress(row) for _ in range(height)] + [comp.flush()]
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(body)) + chunk(b"IEND", b"")


def write_safetensors(path: Path, config: Any = None, tensors: Optional[dict] = None,
                      meta: Optional[dict] = None, model=None) -> Path:
    """A fresnet .safetensors whose stored config (a dict, or raw text) and tensors can be forged."""
    from safetensors.torch import save_file

    model = model or tiny_model()
    if config is None:
        config = model.config.to_dict()
    header = {"format": "fresnet", "format_version": "1",
              "config": config if isinstance(config, str) else json.dumps(config)}
    header.update(meta or {})
    if tensors is None:
        tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=header)
    return path


def write_recordio(folder: Path, identities: int = 4, images: int = 3) -> Path:
    """An InsightFace set (header record, identity records) of ``identities`` x ``images`` JPEGs."""
    from fresnet.data.recordio.writer import RecordIOWriter

    with RecordIOWriter(folder / "train", image_size=(24, 24)) as writer:
        for label in range(identities):
            for k in range(images):
                writer.add_image(jpeg(label * 10 + k), label)
    return folder


def index_of(folder: Path) -> dict[int, int]:
    lines = (folder / "train.idx").read_text().split()
    return {int(k): int(o) for k, o in zip(lines[0::2], lines[1::2])}


def rewrite_records(src: Path, dst: Path, header=None, identity=None, image_label=None) -> Path:
    """Copy the set at ``src`` to ``dst`` with record 0's labels, the first identity record's labels or
    image 1's scalar label replaced (re-framed, with a matching .idx)."""
    from fresnet.data.recordio.format import RecFile, frame_record, pack_record

    offsets = index_of(src)
    first_identity = min(k for k in offsets if k > 0 and k not in _image_keys(src, offsets))
    dst.mkdir(parents=True, exist_ok=True)
    rec, idx = bytearray(), []
    reader = RecFile(src / "train.rec")
    for key, offset in sorted(offsets.items(), key=lambda kv: kv[1]):
        payload, _ = reader.read(offset, "fixture")
        if key == 0 and header is not None:
            payload = pack_record(header, b"", id=0, id2=1)
        elif key == first_identity and identity is not None:
            payload = pack_record(identity, b"", id=key)
        elif key == 1 and image_label is not None:
            payload = struct.pack("<IfQQ", 0, image_label, 1, 0) + payload[24:]
        idx.append(f"{key}\t{len(rec)}\n")
        rec += frame_record(payload)
    reader.close()
    (dst / "train.rec").write_bytes(bytes(rec))
    (dst / "train.idx").write_text("".join(idx))
    (dst / "property").write_text((src / "property").read_text())
    return dst


def _image_keys(src: Path, offsets: dict[int, int]) -> set[int]:
    from fresnet.data.recordio.format import RecFile, unpack_record

    reader = RecFile(src / "train.rec")
    keys = set()
    for key, offset in offsets.items():
        header, data = unpack_record(reader.read(offset, "fixture")[0], "fixture")
        if data:
            keys.add(key)
    reader.close()
    return keys
