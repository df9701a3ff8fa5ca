"""Where a model (or an export) can be written: one writer per model folder (`.<name>.lock` beside it,
holding the PID of the run that writes it), and a place checked before the work (`check_writable`)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import RepytilianError
from ..runtime.fileio import pid_alive


def why_unwritable(folder: Path, error: OSError) -> str:
    """Why nothing can be written in `folder`, in words."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file, not a folder"
    if isinstance(error, PermissionError):
        return f"no permission to write in {folder}"
    return f"nothing can be written in {folder} ({error.strerror or type(error).__name__})"


def check_writable(path: Path, doing: str, advice: str, settings: tuple[str, ...] = (), inside: bool = False) -> None:
    """Refuse `path` where the nearest folder that exists cannot take a new file (the folders below
    it are made as it is written): before the work, not after. The message: "cannot `doing` path:
    why; `advice`" (`settings`: those the advice names). `inside`: the files go into the folder
    `path` (TensorBoard's logs), which is the one to try where it exists."""
    candidates = [path, *path.parents] if inside else list(path.parents)
    existing = next((p.absolute() for p in candidates if p.exists()), Path("/"))
    shown = next((p for p in candidates if p.absolute() == existing), existing)
    try:
        if not existing.is_dir():
            raise NotADirectoryError
        fd, probe = tempfile.mkstemp(dir=existing, prefix=f".{path.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RepytilianError(f"cannot {doing} {path}: {why_unwritable(shown, e)}; {advice}", settings) from None


class TargetLock:
    """`.<name>.lock` beside a model folder, holding the PID of the run that will write it.

    A second run aimed at the same folder is refused while the first is alive; a lock left by a
    process that no longer exists (kill -9, a crash) is taken over.
    """

    def __init__(self, target: Path):
        self.target = target
        self.path = target.parent / f".{target.name}.lock"
        self.held = False

    def acquire(self) -> "TargetLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RepytilianError(f"cannot lock {self.target}: {why_unwritable(self.path.parent, e)}") from None
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner != os.getpid() and pid_alive(owner):
                    raise RepytilianError(
                        f"another training run (PID {owner}) is writing {self.target}; wait for it, stop it "
                        f"(kill -USR1 {owner}), or choose another folder as `out`", ("out",)
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            except OSError as e:
                raise RepytilianError(f"cannot lock {self.target}: {why_unwritable(self.path.parent, e)}") from None
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise RepytilianError(f"cannot lock {self.target} (another run keeps taking {self.path})")

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "TargetLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
