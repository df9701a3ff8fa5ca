"""The package's C files built for this machine with the system's compiler (`cc`, or $CC), once
each, into the cache folder: fused_attention.c (training) and decode_loop.c (generation).

A build is named by the digest of its source, the compiler, the CPU (-march=native builds for it)
and the flags, so a changed file or another machine builds again; it is written to a temporary
file and renamed into place, so another process never loads half of one."""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .cpu import cpu_flags, cpu_name
from .fileio import shareable
from .paths import cache_dir

BUILD_SECONDS = 120


def machine() -> str:
    """What -march=native builds for: the CPU's name and flags (where Linux says them)."""
    return f"{cpu_name()} {platform.machine()} {sorted(cpu_flags() or ())}"


def compiler() -> str:
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not found:
        raise RuntimeError("no C compiler (cc, gcc or clang) found")
    return found


def built(source: Path, flag_sets: Sequence[Sequence[str]], common_flags: Sequence[str]) -> Path:
    """The shared library of `source` for this machine, built into the cache folder unless it is
    there. Each of `flag_sets` is tried in turn (with `common_flags`) until one builds; a
    RuntimeError says why none did."""
    cc = compiler()
    digest = hashlib.sha256(b"\0".join([source.read_bytes(), cc.encode(), machine().encode(),
                                        repr((tuple(flag_sets), list(common_flags))).encode()])).hexdigest()[:16]
    path = cache_dir() / "native" / f"{source.stem}-{digest}.so"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in flag_sets:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".so", dir=path.parent)
        os.close(fd)
        try:
            done = subprocess.run([cc, *flags, *common_flags, "-o", tmp, str(source), "-lm"],
                                  capture_output=True, text=True, timeout=BUILD_SECONDS)
            if done.returncode == 0:
                shareable(tmp)
                os.replace(tmp, path)  # whole or not at all: another process may be loading it
                return path
            errors.append((done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"{cc} failed: {errors[-1]}")
