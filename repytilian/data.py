"""Training text: read it, tokenize it once into a numpy id array, split it, sample batches.

Sources: one file (`-d`), every text file under a folder (`-p`, recursive, sorted by path), or a
named data set (`shakespeare`); JSON token data is read by jsondata.py. The last `VAL_FRACTION`
of the ids is the validation split (nanoGPT's convention, so losses compare), unless JSON data
has a validation part of its own. Batches are random (B, T) windows of the
training split, cut out with one numpy fancy-index (no Python loop over rows).
"""
from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .datasets import dataset_path
from .errors import RepytilianError
from .fileio import read_user_file
from .jsondata import JsonCorpus, read_json_corpus
from .tokenizers import Tokenizer

VAL_FRACTION = 0.1


@dataclass(frozen=True)
class DataSource:
    """Where training data comes from: kind is "dataset", "file" or "dir"; the json_* fields say how
    to read JSON data (see jsondata.py) and are ignored for text."""

    kind: str
    value: str
    json_key: str | None = None
    json_val_key: str | None = None
    json_layout: str | None = None

    @classmethod
    def from_args(cls, datafile: str | None, datapath: str | None, default: str = "shakespeare") -> "DataSource":
        if datafile and datapath:
            raise RepytilianError("give either -d FILE or -p FOLDER, not both")
        if datafile:
            return cls("file", datafile)
        if datapath:
            return cls("dir", datapath)
        return cls("dataset", default)

    def describe(self) -> str:
        return {"dataset": "data set {}", "file": "file {}", "dir": "folder {}"}[self.kind].format(self.value)

    def to_dict(self) -> dict[str, str]:
        """Files and folders as absolute paths, so `-l` finds the data from any working directory."""
        value = self.value if self.kind == "dataset" else str(Path(self.value).resolve())
        json_options = {k: getattr(self, k) for k in ("json_key", "json_val_key", "json_layout") if getattr(self, k)}
        return {"kind": self.kind, "value": value, **json_options}

    @classmethod
    def from_dict(cls, data: dict) -> "DataSource":
        known = {k: data[k] for k in ("kind", "value", "json_key", "json_val_key", "json_layout") if k in data}
        return cls(**known)


def _decode(data: bytes, path: Path) -> str:
    if not data:
        raise RepytilianError(f"{path} is empty: there is no text to train on")
    if b"\x00" in data[:8192]:
        raise RepytilianError(f"{path} looks like a binary file, not text; give a UTF-8 text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RepytilianError(
            f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8 and try again"
        ) from None
    return text.replace("\r\n", "\n")  # Windows line ends would otherwise become tokens of their own


def read_text_file(path: str | Path) -> str:
    path = Path(path)
    if path.is_dir():
        raise RepytilianError(f"{path} is a folder; use -p for a folder of text files, -d for one file")
    return _decode(read_user_file(path), path)


def read_text_dir(path: str | Path) -> str:
    """Every UTF-8 text file under `path` (recursive, sorted, hidden files skipped), each ending in a newline.

    Ending each file's text with a newline keeps the last word of one file from being glued to
    the first word of the next.
    """
    root = Path(path)
    if not root.is_dir():
        if root.exists():
            raise RepytilianError(f"{root} is a file; use -d for a single file, -p for a folder")
        raise RepytilianError(f"no such folder: {root}")
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    texts, skipped = [], []
    for f in files:
        try:
            text = _decode(f.read_bytes(), f)
        except RepytilianError:
            skipped.append(f)
            continue
        texts.append(text if text.endswith("\n") else text + "\n")
    if skipped:
        names = ", ".join(str(s.relative_to(root)) for s in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        print(f"note: skipped {len(skipped)} empty, binary or non-UTF-8 file(s) in {root}: {names}{more}", file=sys.stderr)
    if not texts:
        raise RepytilianError(f"{root} holds no UTF-8 text files to train on")
    return "".join(texts)


def load_text(source: DataSource) -> str:
    if source.kind == "file":
        return read_text_file(source.value)
    if source.kind == "dir":
        return read_text_dir(source.value)
    return read_text_file(dataset_path(source.value))


def load_corpus(source: DataSource, input_format: str = "text") -> str | JsonCorpus:
    """A str for text tokenizers, a JsonCorpus of token sequences for the json tokenizer."""
    if input_format == "json":
        return read_json_corpus(source.kind, source.value, source.json_key, source.json_val_key, source.json_layout)
    return load_text(source)


@dataclass
class TokenData:
    """Token ids of a corpus split into train and validation parts."""

    train: np.ndarray
    val: np.ndarray
    sha256: str = ""
    chars: int = 0

    @classmethod
    def from_text(cls, text: str, tokenizer: Tokenizer, val_fraction: float = VAL_FRACTION) -> "TokenData":
        ids = tokenizer.encode_array(text)
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return cls.split(ids, val_fraction, sha256=sha, chars=len(text))

    @classmethod
    def from_corpus(cls, corpus: str | JsonCorpus, tokenizer: Tokenizer,
                    val_fraction: float = VAL_FRACTION) -> "TokenData":
        if isinstance(corpus, str):
            return cls.from_text(corpus, tokenizer, val_fraction)
        ids = tokenizer.encode_sequences(corpus.train)
        if corpus.val is None:
            return cls.split(ids, val_fraction, sha256=corpus.sha256, chars=corpus.chars)
        return cls(ids, tokenizer.encode_sequences(corpus.val), sha256=corpus.sha256, chars=corpus.chars)

    @classmethod
    def split(cls, ids: np.ndarray, val_fraction: float, **info) -> "TokenData":
        """The last `val_fraction` of the ids is the validation split."""
        n_train = len(ids) - int(len(ids) * val_fraction)
        return cls(train=ids[:n_train], val=ids[n_train:], **info)

    def check_block_size(self, block_size: int) -> None:
        """Both splits need at least one full window of block_size + 1 tokens."""
        shortest = min(len(self.train), len(self.val))
        if shortest <= block_size:
            raise RepytilianError(
                f"the data is too short for a context of {block_size} tokens: the training split has "
                f"{len(self.train)} tokens and the validation split {len(self.val)}. "
                f"Use more data or a smaller context (--block-size {max(1, shortest // 2)})"
            )


def get_batch(
    ids: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x (B, T) and y (B, T), y being x shifted left by one token."""
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator).numpy()
    windows = ids[starts[:, None] + np.arange(block_size + 1)]  # (B, T+1)
    chunk = torch.from_numpy(windows.astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]
