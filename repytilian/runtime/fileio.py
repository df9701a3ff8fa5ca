"""Atomic writes: a file is either the old complete version or the new complete version, never half.

Write to a temporary file in the same directory, fsync it, rename it over the target, then fsync
the directory so the rename itself survives a power cut.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import RepytilianError


def read_user_file(path: Path) -> bytes:
    """The bytes of a file the user named, or a clear error saying why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RepytilianError(f"no such file: {path}") from None
    except OSError as e:
        raise RepytilianError(f"cannot read {path}: {e.strerror}") from None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but someone else's
        return True
    return True


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms (Windows) cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under `root`, and every folder, to disk."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(dirpath))


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
