"""Atomic writes: all or nothing, with normal file permissions."""
from __future__ import annotations

import os
import stat

import pytest

from fresnet.ioutil import atomic_write, atomic_write_bytes


def test_atomic_write_replaces_and_uses_umask_permissions(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_bytes(target, b"keep")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"keep"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
