"""Atomic writes: a file is either the old complete version or the new complete version, never half.

Write to a temporary file in the same directory, fsync it, rename it over the target, then fsync
the directory so the rename itself survives a power cut.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ..errors import RepytilianError


def read_user_file(path: Path) -> bytes:
    """The bytes of a file the user named, or a clear error saying why it cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise RepytilianError(f"no such file: {path}") from None
    except OSError as e:
        raise RepytilianError(f"cannot read {path}: {e.strerror}") from None


def open_user_file(path: Path) -> BinaryIO:
    """A file the user named, open for reading its bytes a piece at a time, or read_user_file's error."""
    try:
        return open(path, "rb")
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


def _umask() -> int:
    """This process's umask, read without changing it where the system can (os.umask can only
    read it by setting it, which another thread could see in between)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shareable(path: Path | str) -> None:
    """Give `path` (and everything under it, for a folder) the permissions a plain open() or mkdir()
    would have: temporary files and folders are made private (0600/0700) and safetensors writes
    0600, and renaming keeps that mode, so a saved model would be unreadable to a web server, a
    colleague or Ollama while the shipped ones are 0644."""
    mask = _umask()
    path = Path(path)
    if not path.is_dir():
        os.chmod(path, 0o666 & ~mask)
        return
    for dirpath, _, filenames in os.walk(path):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o666 & ~mask)


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
        shareable(tmp)
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


@contextmanager
def atomic_output(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file name beside `path` for writers that want a name rather than bytes (GGUF's,
    ONNX's; `suffix` for those that insist on one): when the block ends it is flushed, made
    shareable and renamed over `path`; when the block raises it is removed, and `path` is as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        shareable(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2  # linux/fcntl.h, linux/fs.h


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux's renameat2 with RENAME_EXCHANGE): there is no
    moment at which either name is missing, which two renames cannot promise (a kill -9 between
    them leaves no folder at the target). False where the system or filesystem cannot do it."""
    if platform.system() != "Linux":
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc without it (glibc before 2.28, musl)
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # this filesystem (or kernel) has no exchange: the caller renames twice
    raise OSError(err, os.strerror(err), str(a))
