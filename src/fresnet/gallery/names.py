"""Identity and gallery names: printable text with no path tricks, bounded in length.

Names end up in URLs (``/v1/galleries/{gallery}/identities/{name}``), file names (a gallery is
``<name>.db``) and log lines, so they are checked once, here, before anything stores them.
"""
from __future__ import annotations

import re
import unicodedata

from fresnet.gallery.errors import GalleryError

MAX_IDENTITY_NAME = 128
MAX_GALLERY_NAME = 64
_GALLERY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def identity_name(name: object) -> str:
    """A person's name as given (``'Jean-Luc Picard'``, ``'李小龍'``), refused when it is empty,
    too long, has control or separator characters other than a plain space, a slash or a backslash,
    or is ``.``/``..``; surrounding spaces are not allowed either (two names that look the same)."""
    if not isinstance(name, str):
        raise GalleryError(f"an identity name must be text, got {type(name).__name__}")
    fix = f"use printable text of 1 to {MAX_IDENTITY_NAME} characters without '/', '\\' or control characters"
    if not name or len(name) > MAX_IDENTITY_NAME:
        raise GalleryError(f"identity name of {len(name)} characters: {fix}")
    if name != name.strip() or name in (".", ".."):
        raise GalleryError(f"identity name {name[:40]!r}: no leading or trailing spaces, not '.' or '..'; {fix}")
    for char in name:
        category = unicodedata.category(char)
        if char in "/\\" or category[0] == "C" or (category[0] == "Z" and char != " "):
            raise GalleryError(f"identity name {name[:40]!r} holds the character {char!r}: {fix}")
    return unicodedata.normalize("NFC", name)


def gallery_name(name: object) -> str:
    """A gallery's name: ASCII letters, digits, ``_ . -``, starting with a letter or digit, at most
    64 characters (it names a file and a URL segment)."""
    if not isinstance(name, str) or len(name) > MAX_GALLERY_NAME or not _GALLERY_NAME.fullmatch(name) \
            or ".." in name:
        shown = name[:40] if isinstance(name, str) else type(name).__name__
        raise GalleryError(
            f"gallery name {shown!r}: use 1 to {MAX_GALLERY_NAME} ASCII letters, digits, '_', '.' or '-', "
            "starting with a letter or digit, without '..'"
        )
    return name
