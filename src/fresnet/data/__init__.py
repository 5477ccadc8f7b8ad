"""Face data: InsightFace RecordIO, verification ``.bin`` packs, image folders, synthetic identities."""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RecordIODataset": "fresnet.data.recordio.dataset",
    "RecordIOWriter": "fresnet.data.recordio.writer",
    "load_bin": "fresnet.data.verification_bin",
    "save_bin": "fresnet.data.verification_bin",
    "ImageFolderDataset": "fresnet.data.image_folder",
    "SyntheticFaces": "fresnet.data.synthetic",
    "synthetic_pairs": "fresnet.data.synthetic",
    "write_synthetic_dataset": "fresnet.data.synthetic",
    "pack_images": "fresnet.data.recordio.writer",
    "write_index": "fresnet.data.recordio.format",
    "train_transform": "fresnet.data.transforms",
    "eval_transform": "fresnet.data.transforms",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fresnet.data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
