"""The token cache: a large corpus is tokenized once, streamed to disk, and memory-mapped.

Under `$REPYTILIAN_HOME/tokens/<sha256 of the corpus text>/`:

    tokenizer-<kind>-<options hash>.json   the tokenizer trained on this text with these options
    ids-<tokenizer hash>.bin               the text's ids with that tokenizer, raw little-endian
    ids-<tokenizer hash>.json              {"dtype", "tokens"}: written last, so an entry without
                                           it is incomplete and is built again

The text is read and encoded chunk by chunk (TextFiles.chunks), so memory holds one chunk and its
ids at a time however large the corpus is; training reads windows from the memory-mapped ids. A
run on the same text (hashed, not dated) finds its tokenizer and ids here and skips both passes.
Every file is written under a temporary name and renamed into place, so a killed run never
leaves a half-written entry that a later run would trust.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import RepytilianError
from ..events import ProgressTracker, note
from ..runtime.fileio import atomic_write_bytes, fsync_dir, pid_alive
from ..runtime.paths import cache_dir
from ..tokenizers import Tokenizer

if TYPE_CHECKING:
    from .textfiles import TextFiles

ENCODE_CHUNK_CHARS = 4 << 20


def corpus_cache_dir(corpus: TextFiles) -> Path:
    return cache_dir() / "tokens" / corpus.sha256


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]




def _progress(corpus: TextFiles, what: str) -> ProgressTracker:
    return ProgressTracker(what, "char", corpus.chars)


def _write_error(where: Path, e: OSError) -> RepytilianError:
    return RepytilianError(
        f"cannot write the token cache in {where}: {e.strerror or e}; free some space there "
        "or point REPYTILIAN_HOME at another disk"
    )


def cached_tokenizer(corpus: TextFiles, cls: type[Tokenizer], options: dict[str, Any]) -> Tokenizer:
    """The tokenizer `cls` trained on the corpus with `options`: from the cache, or trained now and kept."""
    key = json.dumps({k: v for k, v in sorted(options.items()) if v is not None})
    path = corpus_cache_dir(corpus) / f"tokenizer-{cls.name}-{_short_hash(key)}.json"
    if path.is_file():
        try:
            return cls.from_json(path.read_text(encoding="utf-8"), str(path))
        except (RepytilianError, OSError, UnicodeDecodeError):
            pass  # a damaged entry is built again
    note(f"training the {cls.name} tokenizer on {corpus.size_bytes / 2**20:,.0f} MB of text, read piece by piece")
    with _progress(corpus, "tokenizer") as bar:
        tokenizer = cls.train_chunks(_counted(corpus.chunks(), bar), **options)
    try:
        atomic_write_bytes(path, tokenizer.to_json().encode("utf-8"))
    except OSError as e:
        raise _write_error(path.parent, e) from None
    return tokenizer


def _counted(chunks, bar):
    for chunk in chunks:
        bar.update(len(chunk))
        yield chunk


def cached_ids(corpus: TextFiles, tokenizer: Tokenizer) -> np.ndarray:
    """The corpus's ids with `tokenizer`, memory-mapped read-only from the cache (built on a miss)."""
    folder = corpus_cache_dir(corpus)
    name = f"ids-{_short_hash(tokenizer.to_json())}"
    ids_path, meta_path = folder / f"{name}.bin", folder / f"{name}.json"
    ids = _open_ids(ids_path, meta_path)
    if ids is not None:
        note(f"token ids from the cache: {ids_path}")
        return ids
    _remove_abandoned(folder)
    note(f"encoding {corpus.size_bytes / 2**20:,.0f} MB of text into {ids_path}")
    dtype = tokenizer.id_dtype.newbyteorder("<")
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    tokens = 0
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f, _progress(corpus, "encoding") as bar:
            for chunk in corpus.chunks(ENCODE_CHUNK_CHARS):
                part = tokenizer.encode_array(chunk).astype(dtype, copy=False)
                f.write(part.tobytes())
                tokens += len(part)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, ids_path)
        fsync_dir(folder)
        atomic_write_bytes(meta_path, json.dumps({"dtype": dtype.str, "tokens": tokens}).encode("utf-8"))
    except OSError as e:
        raise _write_error(folder, e) from None
    finally:
        tmp.unlink(missing_ok=True)
    ids = _open_ids(ids_path, meta_path)
    if ids is None:
        raise RepytilianError(f"the token cache entry {ids_path} could not be read back after writing it")
    return ids


def split_ids(ids: np.memmap, n_first: int) -> tuple[np.ndarray, np.ndarray]:
    """Two memory maps of the same file, [:n_first] and [n_first:], each with its own offset
    (read_windows reads the file at a map's offset)."""
    item = ids.dtype.itemsize

    def part(start: int, count: int) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=ids.dtype)
        return np.memmap(ids.filename, dtype=ids.dtype, mode="r", offset=ids.offset + start * item, shape=(count,))

    return part(0, n_first), part(n_first, len(ids) - n_first)


def read_windows(ids: np.memmap, starts: np.ndarray, length: int) -> np.ndarray:
    """ids[start:start+length] for each start, read from the file rather than through the map.

    Every page read through a memory map stays in the process's resident memory, and the kernel
    reads ahead around each one, so random windows would grow it towards the whole file over a
    long run; read() leaves those pages to the kernel's cache.
    """
    item = ids.dtype.itemsize
    out = np.empty((len(starts), length), dtype=ids.dtype)
    fd = os.open(ids.filename, os.O_RDONLY)
    try:
        for row, start in zip(out, starts):
            row[:] = np.frombuffer(os.pread(fd, length * item, ids.offset + int(start) * item), dtype=ids.dtype)
    finally:
        os.close(fd)
    return out


def _open_ids(ids_path: Path, meta_path: Path) -> np.ndarray | None:
    """The ids of a complete cache entry, or None where there is none (or it does not add up)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        dtype, tokens = np.dtype(meta["dtype"]), int(meta["tokens"])
        if dtype.kind != "u" or ids_path.stat().st_size != tokens * dtype.itemsize:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if tokens == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(ids_path, dtype=dtype, mode="r", shape=(tokens,))


def _remove_abandoned(folder: Path) -> None:
    """Temporary files of runs that were killed while encoding (their PID is in the name)."""
    for tmp in folder.glob(".ids-*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            tmp.unlink(missing_ok=True)
