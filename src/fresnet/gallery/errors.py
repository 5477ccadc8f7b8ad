"""The gallery's errors: all :class:`FresnetError`, so the command line prints them in one line."""
from __future__ import annotations

from fresnet.errors import FresnetError


class GalleryError(FresnetError):
    """Bad use of a gallery: an unknown identity, an invalid name, a malformed embedding."""


class IdentityNotFound(GalleryError):
    """The named identity is not in the gallery."""


class ContractMismatch(GalleryError):
    """Embeddings from another model than the one that filled the gallery."""


class GalleryCorrupt(GalleryError):
    """The gallery file holds something fresnet did not write (a damaged or foreign file)."""
