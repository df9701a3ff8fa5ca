"""The protocol every tokenizer follows, so the rest of Repytilian never needs to know which one it has.

A tokenizer is plain Python (no torch): it is built from a corpus, turns text into ids and back,
writes itself to / reads itself from the model directory's `tokenizer.json`, and says how a
stream of generated ids is shown (`StreamDecoder`).

Text tokenizers (`input_format = "text"`) take a string; the json tokenizer takes sequences of
JSON values. Large texts are encoded in chunks cut where no tokenizer's split can change, so no
Python list of ids ever holds the whole corpus.
"""
from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import RepytilianError

CHUNK_CHARS = 1 << 20


class UnknownTokensError(RepytilianError):
    """A prompt or text contains pieces the vocabulary does not know."""


class Tokenizer(ABC):
    name: ClassVar[str]  # the `-z` name, also stored in the model directory
    input_format: ClassVar[str] = "text"  # "text" or "json": what the training data is
    # Generation from an empty prompt starts at the first of these that the vocabulary has: a new
    # line, as at the start of a text, or a space for a text that has no line breaks.
    start_texts: ClassVar[tuple[str, ...]] = ("\n", " ")
    eos_id: int | None = None  # an end-of-sequence id that ends generation, where the tokenizer has one
    specials: dict[str, int] = {}  # noqa: RUF012 (never mutated) special token name -> id: no text encodes to one

    @classmethod
    @abstractmethod
    def train(cls, corpus: Any, **options: Any) -> "Tokenizer":
        """Build the vocabulary from a training corpus (a str for text tokenizers)."""

    @classmethod
    def train_chunks(cls, chunks: Iterable[str], **options: Any) -> "Tokenizer":
        """Build the vocabulary from a text given in pieces cut at safe points (for corpora larger
        than memory; see textfiles.TextFiles.chunks). Tokenizers that can, override this."""
        return cls.train("".join(chunks), **options)

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

    # --- the model directory's tokenizer.json ----------------------------------------------

    def to_json(self) -> str:
        return json.dumps({"kind": self.name, **self.to_dict()}, ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str, where: str = "tokenizer.json") -> "Tokenizer":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise RepytilianError(f"{where} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise RepytilianError(f"{where} does not describe a tokenizer")
        if data.get("kind") != cls.name:
            raise RepytilianError(f"{where} describes a {data.get('kind')!r} tokenizer, not {cls.name!r}")
        return cls.from_dict(data)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")

    # --- shared helpers -------------------------------------------------------------------

    @property
    def id_dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id (uint16 overflows past 65,535)."""
        return np.dtype(np.uint16 if self.vocab_size <= 2**16 else np.uint32)

    def encode_array(self, text: str) -> np.ndarray:
        """The whole text as a numpy id array, encoded chunk by chunk."""
        parts = [np.asarray(self.encode(chunk), dtype=self.id_dtype) for chunk in text_chunks(text)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.id_dtype)

    def start_ids(self) -> list[int]:
        """Ids to start generation from when the prompt is empty."""
        for text in self.start_texts:
            try:
                return self.encode(text)
            except UnknownTokensError:
                continue
        raise UnknownTokensError(
            "this model's vocabulary has no line break or space to start from; give a `prompt`", ("prompt",)
        )

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    def with_specials(self, names: list[str]) -> "Tokenizer":
        """A new tokenizer: this one with special tokens (ids no text encodes to) after its vocabulary
        (specials.py; byte-level BPE adds real ones). Tokens that are not text take none."""
        from .specials import WithSpecials

        new = [n for n in names if n not in self.specials]
        return WithSpecials(self, new) if new else self


class StreamDecoder:
    """Turns generated ids into display text piece by piece.

    Ids are held back while their text ends in an incomplete character (a byte-level BPE token can
    be half of a UTF-8 sequence), so no piece ever shows a replacement character that the whole
    text would not have.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.pending: list[int] = []

    def head(self, prompt: str, prompt_ids: list[int]) -> str:
        """What is shown before the first generated piece (the prompt as typed)."""
        return prompt

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 8:
            return ""
        self.pending.clear()
        return text

    def flush(self) -> str:
        """The text of any held-back ids."""
        text = self.tokenizer.decode(self.pending) if self.pending else ""
        self.pending.clear()
        return text

    def close(self) -> str:
        """What ends the output: held-back text, and any closing syntax (JSON's bracket)."""
        return self.flush()


# Cut points that leave every tokenizer's pre-tokenization unchanged: just after a newline that
# follows a non-space and precedes one, or just before a single space between two non-spaces.
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)|(?<=\S)(?= \S)")


def text_chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Split `text` into pieces of about `size` characters at safe cut points (see _SAFE_CUT)."""
    start = 0
    while len(text) - start > size:
        cut = last_safe_cut(text, size, start)
        if cut is None:
            break
        yield text[start:cut]
        start = cut
    if start < len(text):
        yield text[start:]


def last_safe_cut(text: str, size: int, start: int = 0, search_from: int | None = None) -> int | None:
    """Where to end a chunk of `text` that begins at `start`: the last safe cut within `size`
    characters, looking back from there (a short look first, widening), else the first one after
    (from `search_from`, where the caller knows there is none before). None if the text has none.
    """
    end = start + size
    lookback = min(size, 4096)
    while True:
        cut = None
        for m in _SAFE_CUT.finditer(text, max(start, end - lookback), end):
            cut = m.start()
        if cut is not None and cut > start:
            return cut
        if lookback >= size:
            break
        lookback = min(size, lookback * 4)
    m = _SAFE_CUT.search(text, max(end, search_from or 0))
    return m.start() if m else None


def reject_options(name: str, options: dict[str, Any]) -> None:
    """Training options that this tokenizer has no use for are a mistake worth telling."""
    given = [k for k, v in options.items() if v is not None]
    if given:  # each named as the caller names it: a flag on the command line, a keyword in Python
        raise RepytilianError(f"{', '.join(f'`{k}`' for k in given)} does not apply to the {name} tokenizer",
                              tuple(given))


def check_vocab(vocab: Any, kind: str) -> None:
    """Reject a stored vocabulary that cannot be right (duplicates, wrong types) before using it."""
    if not isinstance(vocab, list) or not vocab:
        raise RepytilianError(f"{kind} tokenizer: 'vocab' must be a non-empty list")
    if not all(isinstance(t, str) and t for t in vocab):
        raise RepytilianError(f"{kind} tokenizer: every vocabulary entry must be a non-empty string")
    if len(set(vocab)) != len(vocab):
        raise RepytilianError(f"{kind} tokenizer: the vocabulary has duplicate entries")
