"""Character-level tokenizer, as in the lecture: every distinct character of the corpus is a token."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import RepytilianError
from .base import (
    CHUNK_CHARS,
    Tokenizer,
    UnknownTokensError,
    check_vocab,
    reject_options,
)


class CharacterTokenizer(Tokenizer):
    name = "characters"

    def __init__(self, chars: list[str]):
        check_vocab(chars, self.name)
        if any(len(c) != 1 for c in chars):
            raise RepytilianError("characters tokenizer: every vocabulary entry must be one character")
        self.itos = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def train(cls, corpus: str, **options: Any) -> "CharacterTokenizer":
        return cls.train_chunks([corpus], **options)

    @classmethod
    def train_chunks(cls, chunks: Iterable[str], **options: Any) -> "CharacterTokenizer":
        reject_options(cls.name, options)
        chars: set[str] = set()
        for chunk in chunks:
            chars.update(chunk)
        return cls(sorted(chars))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            missing = sorted({c for c in text if c not in stoi})
            shown = ", ".join(repr(c) for c in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise UnknownTokensError(
                f"unknown character{'s' if len(missing) > 1 else ''} {shown}{more}: "
                "this model only knows the characters of its training text"
            ) from None

    def encode_array(self, text: str) -> np.ndarray:
        # A lookup table over code points encodes a large corpus at C speed, chunk by chunk,
        # without a Python list of ids (any cut is safe between characters).
        table = np.full(max(map(ord, self.itos)) + 1, -1, dtype=np.int64)
        table[[ord(c) for c in self.itos]] = np.arange(len(self.itos))
        out = np.empty(len(text), dtype=self.id_dtype)
        for start in range(0, len(text), CHUNK_CHARS):
            chunk = text[start : start + CHUNK_CHARS]
            codes = np.frombuffer(chunk.encode("utf-32-le"), dtype=np.uint32)
            ids = np.full(len(codes), -1, dtype=np.int64)
            in_range = codes < len(table)
            ids[in_range] = table[codes[in_range]]
            if (ids < 0).any():
                self.encode(chunk)  # raises with the list of unknown characters
            out[start : start + len(chunk)] = ids
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"vocab": self.itos}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CharacterTokenizer":
        return cls(data.get("vocab"))
