"""OpenAI's fixed BPE vocabularies through `tiktoken`: `-z tiktoken`, the original Repytilian's
tokenizer, with its `o200k_base` encoding (200,019 tokens) or another one (`--encoding NAME`), and
`-z gpt2`, GPT-2's 50,257-token encoding (the one Hugging Face's GPT-2 models use).

tiktoken downloads an encoding's file once and caches it (`TIKTOKEN_CACHE_DIR`); with no network
and no cached copy these tokenizers cannot work, and say so. Note the size: a 50,257- or
200,019-token embedding table dwarfs a small model (see the tokenizer table of docs/data.md).
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
            "the tiktoken and gpt2 tokenizers need the 'tiktoken' package: pip install 'repytilian[gpt2]'"
        ) from None
    if name not in tiktoken.list_encoding_names():
        raise RepytilianError(f"tiktoken has no encoding {name!r}; it has: {', '.join(tiktoken.list_encoding_names())}")
    try:
        with _no_downloads():
            return tiktoken.get_encoding(name)
    except Exception as e:  # network errors come from requests, urllib3 or the OS
        raise RepytilianError(
            f"tiktoken's {name!r} encoding is not on this machine and could not be downloaded "
            f"({type(e).__name__}). Run once with network access so tiktoken caches it "
            "(set TIKTOKEN_CACHE_DIR to keep the cache), or use `tokenizer` bpe to train a BPE on your own text",
            ("tokenizer",)
        ) from None


class TiktokenTokenizer(Tokenizer):
    """A tiktoken encoding used as it is: its vocabulary is fixed, so nothing is learnt from the text."""

    name = "tiktoken"
    default_encoding = "o200k_base"  # the original Repytilian's
    fixed_encoding = False

    def __init__(self, encoding: Any):
        self.enc = encoding

    @classmethod
    def train(cls, corpus: str, encoding: str | None = None, **options: Any) -> "TiktokenTokenizer":
        reject_options(cls.name, {**options, "encoding": encoding if cls.fixed_encoding else None})
        return cls(load_encoding(encoding or cls.default_encoding))

    @classmethod
    def train_chunks(cls, chunks: Iterable[str], **options: Any) -> "TiktokenTokenizer":
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
    def from_dict(cls, data: dict[str, Any]) -> "TiktokenTokenizer":
        name = data.get("encoding")
        if not isinstance(name, str) or (cls.fixed_encoding and name != cls.default_encoding):
            raise RepytilianError(f"{cls.name} tokenizer: unknown encoding {name!r}")
        return cls(load_encoding(name))


class GPT2Tokenizer(TiktokenTokenizer):
    name = "gpt2"
    default_encoding = ENCODING
    fixed_encoding = True
