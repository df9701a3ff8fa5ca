"""The protocol every tokenizer follows, so the rest of Repytilian never needs to know which one it has.

A tokenizer is plain Python (no torch): it is built from a corpus, turns text into ids and back,
and writes itself to / reads itself from the model directory's `tokenizer.json`.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import numpy as np

from ..errors import RepytilianError


class UnknownTokensError(RepytilianError):
    """A prompt or text contains pieces the vocabulary does not know."""


class Tokenizer(ABC):
    name: ClassVar[str]  # the `-z` name, also stored in the model directory
    # Which piece starts generation from an empty prompt, if the vocabulary has it.
    start_text: ClassVar[str] = "\n"

    @classmethod
    @abstractmethod
    def train(cls, text: str) -> "Tokenizer":
        """Build the vocabulary from a training corpus."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text -> ids; raises UnknownTokensError naming what the vocabulary lacks."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text."""

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form; `from_dict(to_dict())` gives back an equal tokenizer."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tokenizer": ...

    # --- shared helpers -------------------------------------------------------------------

    @property
    def id_dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id (uint16 overflows past 65,535)."""
        return np.dtype(np.uint16 if self.vocab_size <= 2**16 else np.uint32)

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=self.id_dtype)

    def start_ids(self) -> list[int]:
        """Ids to start generation from when the prompt is empty."""
        try:
            return self.encode(self.start_text)
        except UnknownTokensError:
            return [0]

    def to_json(self) -> str:
        return json.dumps({"kind": self.name, **self.to_dict()}, ensure_ascii=False, indent=1)


def check_vocab(vocab: Sequence[Any], kind: str) -> None:
    """Reject a stored vocabulary that cannot be right (duplicates, wrong types) before using it."""
    if not isinstance(vocab, list) or not vocab:
        raise RepytilianError(f"{kind} tokenizer: 'vocab' must be a non-empty list")
    if not all(isinstance(t, str) and t for t in vocab):
        raise RepytilianError(f"{kind} tokenizer: every vocabulary entry must be a non-empty string")
    if len(set(vocab)) != len(vocab):
        raise RepytilianError(f"{kind} tokenizer: the vocabulary has duplicate entries")
