"""GPT-2's BPE vocabulary (50,257 tokens) through `tiktoken`, as the original Repytilian offered.

tiktoken downloads the encoding's two files once and caches them (`TIKTOKEN_CACHE_DIR`); with no
network and no cached copy this tokenizer cannot work, and says so. Note the size: a 50,257-token
embedding table dwarfs a small model (see the README's tokenizer table).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

from ..errors import RepytilianError
from .base import Tokenizer, reject_options

ENCODING = "gpt2"


@contextmanager
def _no_downloads():
    """With REPYTILIAN_OFFLINE set, let tiktoken read its cache but never the network."""
    if not os.environ.get("REPYTILIAN_OFFLINE"):
        yield
        return
    import tiktoken.load as load

    original = load.read_file

    def refuse(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise OSError(f"downloads are disabled (REPYTILIAN_OFFLINE is set): {blobpath}")
        return original(blobpath)

    load.read_file = refuse
    try:
        yield
    finally:
        load.read_file = original


def load_encoding(name: str = ENCODING) -> Any:
    try:
        import tiktoken
    except ImportError:
        raise RepytilianError(
            "the gpt2 tokenizer needs the 'tiktoken' package: pip install 'repytilian[gpt2]'"
        ) from None
    try:
        with _no_downloads():
            return tiktoken.get_encoding(name)
    except Exception as e:  # network errors come from requests, urllib3 or the OS
        raise RepytilianError(
            f"tiktoken's {name!r} encoding is not on this machine and could not be downloaded "
            f"({type(e).__name__}). Run once with network access so tiktoken caches it "
            "(set TIKTOKEN_CACHE_DIR to keep the cache), or use -z bpe to train a BPE on your own text"
        ) from None


class GPT2Tokenizer(Tokenizer):
    name = "gpt2"

    def __init__(self, encoding: Any):
        self.enc = encoding

    @classmethod
    def train(cls, corpus: str, **options: Any) -> "GPT2Tokenizer":
        reject_options(cls.name, options)
        return cls(load_encoding())

    @classmethod
    def train_chunks(cls, chunks: Iterable[str], **options: Any) -> "GPT2Tokenizer":
        return cls.train("", **options)  # a fixed vocabulary: nothing to read

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)  # "<|endoftext|>" in a text is just text

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids), errors="replace")

    def to_dict(self) -> dict[str, Any]:
        return {"encoding": self.enc.name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GPT2Tokenizer":
        if data.get("encoding") != ENCODING:
            raise RepytilianError(f"gpt2 tokenizer: unknown encoding {data.get('encoding')!r}")
        return cls(load_encoding(data["encoding"]))
