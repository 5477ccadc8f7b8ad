"""The embedding contract: which model filled a gallery, so another model's embeddings are refused.

Embeddings of two models are both unit vectors of plausible size; compared with each other they
give scores that look valid and answers that are silently wrong. A gallery therefore records the
model that filled it -- a digest of its weights, its input size and normalisation, the embedding
size, the detector and the alignment -- and refuses embeddings stated to come from another.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from fresnet.gallery.errors import ContractMismatch, GalleryCorrupt
from fresnet.validate import as_int, as_int_tuple, as_mapping, as_str


@dataclass(frozen=True)
class EmbeddingContract:
    """What a gallery's embeddings depend on. ``model_digest`` is ``sha256:<hex>`` of the weights file."""

    model_digest: str
    embedding_size: int
    input_size: tuple[int, int] = (112, 112)
    normalisation: str = "(x - 127.5) / 127.5"
    detector: str = ""
    alignment: str = "arcface-5pt"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "input_size": list(self.input_size)}, sort_keys=True)

    @classmethod
    def from_mapping(cls, data: Any, where: str = "embedding contract") -> EmbeddingContract:
        data = as_mapping(data, "contract", where)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise GalleryCorrupt(f"{where}: unknown keys {sorted(unknown)}")
        try:
            return cls(
                model_digest=as_str(data["model_digest"], "model_digest", where),
                embedding_size=as_int(data["embedding_size"], "embedding_size", where, minimum=1, maximum=65536),
                input_size=as_int_tuple(data.get("input_size", (112, 112)), "input_size", where, minimum=1,
                                        maximum=65536, length=2),
                normalisation=as_str(data.get("normalisation", cls.normalisation), "normalisation", where),
                detector=as_str(data.get("detector", ""), "detector", where),
                alignment=as_str(data.get("alignment", cls.alignment), "alignment", where),
            )
        except KeyError as exc:
            raise GalleryCorrupt(f"{where}: missing key {exc.args[0]!r}") from None

    def differences(self, other: EmbeddingContract) -> list[str]:
        return [f"{f.name}: gallery has {getattr(self, f.name)!r}, given {getattr(other, f.name)!r}"
                for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def require_same(self, other: EmbeddingContract | None, where: str) -> None:
        """Refuse ``other`` when it names another model (``None`` states nothing, and passes)."""
        if other is None or other == self:
            return
        raise ContractMismatch(
            f"{where}: these embeddings come from another model than the one that filled the gallery "
            f"({'; '.join(self.differences(other))}). Embeddings of different models are not comparable; "
            "use the gallery's model, or enrol everyone again into a new gallery made with this one"
        )


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """``sha256:<hex>`` of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def model_digest(spec: str) -> str:
    """The digest a model is known by: ``sha256:<hex>`` of its weights file (an MXNet ``prefix,epoch``
    names its ``-NNNN.params``), or ``preset:<name>`` for a preset's seeded random weights."""
    path = Path(spec)
    if path.is_file():
        return file_digest(path)
    prefix, _, epoch = spec.rpartition(",")
    if prefix and epoch.isdigit() and Path(f"{prefix}-{int(epoch):04d}.params").is_file():
        return file_digest(f"{prefix}-{int(epoch):04d}.params")
    return f"preset:{spec}"
