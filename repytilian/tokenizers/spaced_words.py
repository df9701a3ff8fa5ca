"""The original Repytilian's word tokenizer: words are what lies between runs of whitespace.

Text is split with `str.split()` and joined back with single spaces, as the original did, so a
model of the original trained on words (`repytilian import-legacy`) sees the same ids it was
trained on. Punctuation stays part of its word ("Luke," and "Luke" are two tokens) and line breaks
are lost when text is joined back; Repytilian's own `words` tokenizer keeps both, and is the one
to train new models with.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .base import StreamDecoder, reject_options
from .words import WordTokenizer


class SpacedWordTokenizer(WordTokenizer):
    name = "spaced_words"

    @classmethod
    def train_chunks(cls, chunks: Iterable[str], **options: Any) -> "SpacedWordTokenizer":
        reject_options(cls.name, options)
        vocab: set[str] = set()
        for chunk in chunks:
            vocab.update(chunk.split())
        return cls(sorted(vocab))

    def encode(self, text: str) -> list[int]:
        pieces = text.split()
        try:
            return [self.stoi[p] for p in pieces]
        except KeyError:
            raise self._unknown(pieces) from None

    def _unknown(self, pieces: list[str]) -> Exception:
        from .base import UnknownTokensError

        return UnknownTokensError(self._unknown_message(pieces).replace(
            "a words-tokenized model", "a model of the original Repytilian's words tokenizer"))

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.itos[i] for i in ids)

    def start_ids(self) -> list[int]:
        return [0]  # no text is empty of words; the original started from id 0

    def stream_decoder(self) -> StreamDecoder:
        return _SpacedStream(self)


class _SpacedStream(StreamDecoder):
    """Each word after the first is shown with the space that decode() puts before it."""

    def __init__(self, tokenizer: SpacedWordTokenizer):
        super().__init__(tokenizer)
        self.started = False

    def head(self, prompt: str, prompt_ids: list[int]) -> str:
        self.started = bool(prompt.strip())  # an empty prompt starts from id 0, which is not shown
        return prompt

    def push(self, token_id: int) -> str:
        text = self.tokenizer.decode([token_id])
        text, self.started = (" " + text if self.started else text), True
        return text
