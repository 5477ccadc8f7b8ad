"""Small file helpers shared by every reader and writer.

* Writers: :func:`atomic_write` (temp file then rename, so a crash never leaves half a file); an
  ``OSError`` on the way (disk full, file-size limit, read-only folder) is re-raised naming the
  destination, and :func:`remove_stale_temps` clears the temp files a killed process left behind.
* Readers: :func:`regular_file` refuses what is not a regular file before it is opened (a FIFO
  blocks forever, ``/dev/zero`` never ends, a directory is a confusing error later) and
  :func:`read_text` reads a whole text file only when its size is under the ``max_text_bytes`` limit.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator, Union

from fresnet.errors import FresnetError

PathLike = Union[str, os.PathLike]
TEMP_SUFFIX = ".tmp"


def _with_path(exc: OSError, path: Path, temp: object = None) -> OSError:
    """The same kind of OSError naming ``path``, when it names no file or only the temp file
    (an error about another file, e.g. a source read inside the block, is kept as it is)."""
    if exc.errno is None or exc.filename not in (None, temp):
        return exc
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file next to ``path``; on success fsync and rename it over ``path``.

    On any exception the temp file is removed and ``path`` is left untouched. An ``OSError`` is
    re-raised as the same type with ``path`` as its file name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file sits where a parent folder should be
        raise NotADirectoryError(20, "a parent of this path is a file, not a directory", str(path)) from exc
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        renamed = _with_path(exc, path, exc.filename)
        if renamed is exc:
            raise
        raise renamed from exc
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        renamed = _with_path(exc, path, tmp) if isinstance(exc, OSError) else exc
        if renamed is exc:
            raise
        raise renamed from exc


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def remove_stale_temps(folder: PathLike) -> list[Path]:
    """Delete the ``.NAME.XXXX.tmp`` files :func:`atomic_write` leaves when its process is killed.

    Only call this for a folder this process owns (a run's output on resume): another process
    may be writing there otherwise."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                path.unlink()
                removed.append(path)
    return removed


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def regular_file(path: PathLike, what: str = "file") -> Path:
    """``path`` if it is a regular file (symlinks followed); else an error before anything opens it.

    A missing file raises ``FileNotFoundError`` naming the path; a directory, FIFO, device or
    socket raises :class:`FresnetError` (reading a FIFO blocks, ``/dev/zero`` never ends)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(2, f"no such {what}", str(path)) from None
    except NotADirectoryError:
        raise NotADirectoryError(20, f"a parent of this {what} is not a directory", str(path)) from None
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
        raise
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
        raise FresnetError(f"{path}: is {kind}, not a regular file; give the {what} itself")
    return path


def read_bytes(path: PathLike, what: str = "file", limit: str = "max_text_bytes") -> bytes:
    """The bytes of a regular file whose size is within the ``limit`` cap (see :mod:`fresnet.limits`)."""
    from fresnet.limits import check

    path = regular_file(path, what)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        check(limit, size, f"reading this {what} whole ({size:,} bytes)", str(path))
        return handle.read(size + 1)[: size]  # + 1: a file growing while read is cut at its stat size


def read_text(path: PathLike, what: str = "file", encoding: str = "utf-8", limit: str = "max_text_bytes") -> str:
    """:func:`read_bytes` decoded; undecodable bytes are a :class:`FresnetError` naming the file."""
    data = read_bytes(path, what, limit)
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise FresnetError(f"{path}: the {what} is not {encoding} text (byte {exc.start}); is it the right file?") \
            from None
