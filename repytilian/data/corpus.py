"""Training text: read it, tokenize it once into a numpy id array, split it, sample batches.

Sources: one file (`-d`), every text file under a folder (`-p`, recursive, sorted by path), or a
named data set (`shakespeare`); JSON token data is read by jsondata.py. Text of 64 MB or more is
not read into memory: it is streamed through the token cache (textfiles.py, tokencache.py) and
its ids are memory-mapped. The last `VAL_FRACTION`
of the ids is the validation split (nanoGPT's convention, so losses compare), unless JSON data
has a validation part of its own. Batches are random (B, T) windows of the
training split, cut out with one numpy fancy-index (no Python loop over rows), or for cached ids
read from their file (tokencache.read_windows).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import RepytilianError, SettingError
from ..events import note
from ..tokenizers import Tokenizer
from .conversations import ChatExamples
from .datasets import dataset_path
from .jsondata import JsonCorpus, read_json_corpus
from .records import is_records
from .textfiles import TextFiles, note_folder_reading, read_text, text_files_under
from .tokencache import cached_ids, cached_tokenizer, read_windows, split_ids

VAL_FRACTION = 0.1
STREAM_MB = 64  # see stream_threshold


class DataTooShort(RepytilianError):
    """The data is too short for the context, and a smaller context (`fits`) would do: `found` says
    what was found, for a caller without a `block_size` of its own to advise in its own words."""

    def __init__(self, found: str, fits: int):
        self.found = found
        super().__init__(f"{found}. Use more data or a smaller context (`block_size` {fits})", ("block_size",))


@dataclass(frozen=True)
class DataSource:
    """Where training data comes from: kind is "dataset", "file", "dir" or "chat" (conversations to
    fine-tune on, conversations.py, validated on the last tenth or on those of `chat_val`); the
    json_* fields say how to read JSON data (see jsondata.py) and are ignored for text."""

    kind: str
    value: str
    json_key: str | None = None
    json_val_key: str | None = None
    json_layout: str | None = None
    chat_val: str | None = None
    text_field: str | None = None  # of JSONL and Parquet text: the field to train on (records.py; "text")

    @classmethod
    def of(cls, where: "DataSource | str | os.PathLike") -> "DataSource":
        """A DataSource as given, or of a path as a Python caller writes one: a folder's files, or a file."""
        if isinstance(where, DataSource):
            return where
        if not isinstance(where, (str, os.PathLike)):
            raise SettingError("data", f"must be a path to a file or a folder (str or pathlib.Path), got {where!r}")
        return cls("dir" if Path(where).is_dir() else "file", str(where))

    @classmethod
    def from_args(cls, datafile: str | None, datapath: str | None, default: str = "shakespeare") -> "DataSource":
        if datafile and datapath:
            raise RepytilianError("give either `data_file` or `data_path`, not both", ("data_file", "data_path"))
        if datafile:
            return cls("file", datafile)
        if datapath:
            return cls("dir", datapath)
        return cls("dataset", default)

    def describe(self) -> str:
        return {"dataset": "data set {}", "file": "file {}", "dir": "folder {}",
                "chat": "conversations {}"}[self.kind].format(self.value)

    def to_dict(self) -> dict[str, str]:
        """Files and folders as absolute paths, so `-l` finds the data from any working directory."""
        value = self.value if self.kind == "dataset" else str(Path(self.value).resolve())
        json_options = {k: getattr(self, k) for k in ("json_key", "json_val_key", "json_layout") if getattr(self, k)}
        if self.chat_val:
            json_options["chat_val"] = str(Path(self.chat_val).resolve())
        if self.text_field:
            json_options["text_field"] = self.text_field
        return {"kind": self.kind, "value": value, **json_options}

    @classmethod
    def from_dict(cls, data: dict) -> "DataSource":
        known = {k: data[k] for k in ("kind", "value", "json_key", "json_val_key", "json_layout", "chat_val",
                                      "text_field") if k in data}
        return cls(**known)


def stream_threshold() -> int:
    """Text corpora of at least this many bytes are streamed through the token cache (tokencache.py)."""
    try:
        return int(float(os.environ.get("REPYTILIAN_STREAM_MB", STREAM_MB)) * 2**20)
    except ValueError:
        raise RepytilianError("REPYTILIAN_STREAM_MB must be a number of megabytes") from None


def read_text_file(path: str | Path, text_field: str | None = None) -> str:
    path = Path(path)
    if path.is_dir():
        raise RepytilianError(f"{path} is a folder; use `data_path` for a folder of text files, `data_file` for one file",
                              ("data_file", "data_path"))
    return read_text(path, text_field)


def _folder_files(path: str | Path) -> tuple[Path, list[Path]]:
    root = Path(path)
    if not root.is_dir():
        if root.exists():
            raise RepytilianError(f"{root} is a file; use `data_file` for a single file, `data_path` for a folder",
                                  ("data_file", "data_path"))
        raise RepytilianError(f"no such folder: {root}")
    return root, text_files_under(root)


def read_text_dir(path: str | Path, text_field: str | None = None) -> str:
    """Every UTF-8 text file under `path` (recursive, sorted, hidden files skipped), each ending in a newline.

    Ending each file's text with a newline keeps the last word of one file from being glued to
    the first word of the next.
    """
    root, files = _folder_files(path)
    texts, skipped = [], []
    for f in files:
        try:
            text = read_text(f, text_field)
        except RepytilianError:
            if is_records(f):  # a broken record is a mistake to tell, not a file to skip
                raise
            skipped.append(f)
            continue
        texts.append(text if text.endswith("\n") else text + "\n")
    note_folder_reading(root, skipped, files)
    if not texts:
        raise RepytilianError(f"{root} holds no UTF-8 text files to train on")
    return "".join(texts)


def load_text(source: DataSource, stream: bool = True) -> str | TextFiles:
    """The text of a source: one string, or for large files and folders (and `stream`) a TextFiles
    that is read piece by piece (see stream_threshold)."""
    if source.kind == "file":
        path = Path(source.value)
        if stream and path.is_file() and path.stat().st_size >= stream_threshold():
            return TextFiles.scan([path], newline_after_each=False, text_field=source.text_field)
        return read_text_file(path, source.text_field)
    if source.kind == "dir":
        root, files = _folder_files(source.value)
        if stream and sum(f.stat().st_size for f in files) >= stream_threshold():
            return TextFiles.scan(files, newline_after_each=True, root=root, text_field=source.text_field)
        return read_text_dir(root, source.text_field)
    return read_text_file(dataset_path(source.value))


def load_corpus(source: DataSource, input_format: str = "text", stream: bool = True) -> str | TextFiles | JsonCorpus:
    """A str (or a TextFiles, for large text) for text tokenizers, a JsonCorpus for the json tokenizer."""
    if input_format == "json":
        return read_json_corpus(source.kind, source.value, source.json_key, source.json_val_key, source.json_layout)
    return load_text(source, stream)


def train_tokenizer(tokenizer_cls: type[Tokenizer], corpus: str | TextFiles | JsonCorpus, **options) -> Tokenizer:
    """A tokenizer built from the corpus; for a large corpus, from the cache when it was built before."""
    if isinstance(corpus, TextFiles):
        tokenizer = cached_tokenizer(corpus, tokenizer_cls, options)
    else:
        tokenizer = tokenizer_cls.train(corpus, **options)
    asked = options.get("vocab_size")
    if asked and tokenizer.vocab_size < asked:  # a BPE whose text ran out of pairs to merge: said, not silently fewer
        note(f"note: the {tokenizer.name} tokenizer learned {tokenizer.vocab_size:,} tokens of the {asked:,} asked "
             "for: the text has no more pairs to merge (more text gives more)", settings=("vocab_size",))
    return tokenizer


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
    def from_corpus(cls, corpus: str | TextFiles | JsonCorpus, tokenizer: Tokenizer,
                    val_fraction: float = VAL_FRACTION) -> "TokenData":
        if isinstance(corpus, TextFiles):  # ids memory-mapped from the cache: never all in memory
            return cls.split(cached_ids(corpus, tokenizer), val_fraction, sha256=corpus.sha256, chars=corpus.chars)
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
        if isinstance(ids, np.memmap):  # two maps with their own offsets, which read_windows reads at
            train, val = split_ids(ids, n_train)
            return cls(train=train, val=val, **info)
        return cls(train=ids[:n_train], val=ids[n_train:], **info)

    def check_block_size(self, block_size: int) -> None:
        """Both splits need at least one full window of block_size + 1 tokens."""
        shortest = min(len(self.train), len(self.val))
        if shortest > block_size:
            return
        found = (f"the data is too short for a context of {block_size} token{'s' * (block_size != 1)}: the "
                 f"training split has {len(self.train):,} tokens and the validation split {len(self.val):,}")
        if shortest < 2:  # not even a context of one token fits: a smaller one cannot help
            raise RepytilianError(f"{found}. Use more data: each split needs at least 2 tokens")
        raise DataTooShort(found, max(1, shortest // 2))


def get_batch(
    ids: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator,
    part: slice = slice(None),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x (B, T) and y (B, T), y being x shifted left by one token. With `part`,
    only those of the B windows are read (one process's share; the stream moves on by all B).
    Conversations (ChatExamples) give a conversation a row instead."""
    if isinstance(ids, ChatExamples):
        return ids.batch(batch_size, block_size, generator, part)
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator).numpy()[part]
    return windows_at(ids, starts, block_size)


def estimate_batches(ids: np.ndarray, batches: int, batch_size: int, block_size: int,
                     seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches a periodic loss estimate scores, the same every time so that estimates compare:
    windows evenly spaced over the whole split (a systematic sample, its easy and hard stretches in
    proportion). A fixed random draw was used before, and the draw of its seed at context 64 and
    batch 16 (the default and speedrun presets, v1c, v2c) was luckier than most on Tiny Shakespeare:
    0.035-0.047 below the whole split's loss for four models, the lowest of 21 draws, so the demo's
    evaluations read 1.48 for a model whose whole-split loss was 1.53; the evenly spaced windows read
    0.013-0.024 above it (at v3c's context 128 the old draw was 0.004 above, these 0.020; either way
    an estimate of 320 windows moves 0.01-0.02 from draw to draw). Conversations (ChatExamples): a
    fixed random draw of them, from `seed`."""
    if isinstance(ids, ChatExamples):
        generator = torch.Generator().manual_seed(seed)
        for _ in range(batches):
            yield ids.batch(batch_size, block_size, generator)
        return
    starts = np.linspace(0, len(ids) - block_size - 1, batches * batch_size).round().astype(np.int64)
    for first in range(0, len(starts), batch_size):
        yield windows_at(ids, starts[first:first + batch_size], block_size)


def windows_at(ids: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of block_size + 1 tokens at `starts`: x (B, T) and y, x shifted left by one token."""
    if isinstance(ids, np.memmap):  # a large corpus in the token cache
        windows = read_windows(ids, starts, block_size + 1)
    else:
        windows = ids[starts[:, None] + np.arange(block_size + 1)]  # (B, T+1)
    chunk = torch.from_numpy(windows.astype(np.int64))
    return chunk[:, :-1], chunk[:, 1:]
