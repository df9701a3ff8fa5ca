"""Special tokens (a chat's turns and their end) for tokenizers whose vocabulary has no room for them.

A special token is an id that no text ever encodes to: it comes only from a template (chat_format.py),
so a user who types `<|end|>` gets those characters, never the token. Byte-level BPE adds real
special tokens to its Hugging Face tokenizer (bpe.py), which is how transformers and llama.cpp
read them; the character, word and tiktoken vocabularies get reserved ids after their own
(`WithSpecials`), stored in tokenizer.json under "specials".
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import RepytilianError
from .base import StreamDecoder, Tokenizer

END_OF_TURN = "<|end|>"  # where it is among the specials, generation ends at it (the tokenizer's eos_id)
PADDING = "<|padding {}|>"  # rows a published model rounds its vocabulary up with: kept, never sampled


def padding_names(count: int, start: int = 0) -> list[str]:
    return [PADDING.format(i) for i in range(start, start + count)]


def never_sampled(tokenizer: Tokenizer) -> list[int]:
    """The ids generation must never choose: the padding rows of an imported vocabulary."""
    prefix = PADDING.split("{")[0]
    return sorted(i for name, i in tokenizer.specials.items() if name.startswith(prefix))


def check_names(names: list[str], taken: Iterable[str] = ()) -> None:
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise RepytilianError("special tokens must be distinct, non-empty strings")
    clash = sorted(set(names) & set(taken))
    if clash:
        raise RepytilianError(f"special token {clash[0]!r} is already a token of this vocabulary")


class WithSpecials(Tokenizer):
    """`inner`'s vocabulary, then one reserved id for each special token name, in order."""

    def __init__(self, inner: Tokenizer, names: list[str]):
        if inner.input_format != "text":
            raise RepytilianError(f"the {inner.name} tokenizer's tokens are not text: it takes no special tokens")
        check_names(names)
        self.inner, self.names = inner, list(names)
        self.name, self.input_format, self.start_texts = inner.name, inner.input_format, inner.start_texts
        self.base = inner.vocab_size
        self.specials = {name: self.base + i for i, name in enumerate(self.names)}
        self.eos_id = self.specials.get(END_OF_TURN, inner.eos_id)

    def __getattr__(self, attr: str) -> Any:  # the inner tokenizer's own attributes (itos, enc, ...)
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    @classmethod
    def train(cls, corpus: Any, **options: Any) -> "Tokenizer":
        raise RepytilianError("special tokens are added to a trained tokenizer, not trained")

    @property
    def vocab_size(self) -> int:
        return self.base + len(self.names)

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def encode_array(self, text: str) -> np.ndarray:
        return self.inner.encode_array(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.inner.decode([i for i in ids if i < self.base])  # a special token shows as nothing

    def stream_decoder(self) -> StreamDecoder:
        return _SkipSpecials(self, self.inner.stream_decoder())

    def with_specials(self, names: list[str]) -> Tokenizer:
        new = [n for n in names if n not in self.specials]
        return WithSpecials(self.inner, self.names + new) if new else self

    def to_dict(self) -> dict[str, Any]:
        return {**self.inner.to_dict(), "specials": self.names}

    def to_json(self) -> str:
        import json

        return json.dumps({"kind": self.name, **self.to_dict()}, ensure_ascii=False, indent=1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Tokenizer":
        raise RepytilianError("read through tokenizers.tokenizer_from_json")


class _SkipSpecials(StreamDecoder):
    """The inner tokenizer's stream decoder, with special tokens shown as nothing."""

    def __init__(self, tokenizer: WithSpecials, inner: StreamDecoder):
        super().__init__(tokenizer)
        self.inner = inner

    def head(self, prompt: str, prompt_ids: list[int]) -> str:
        return self.inner.head(prompt, [i for i in prompt_ids if i < self.tokenizer.base])

    def push(self, token_id: int) -> str:
        return "" if token_id >= self.tokenizer.base else self.inner.push(token_id)

    def flush(self) -> str:
        return self.inner.flush()

    def close(self) -> str:
        return self.inner.close()


def special_label(tokenizer: Tokenizer, token_id: int) -> str | None:
    """The name of a special token id (for showing it on its own), else None."""
    for name, i in getattr(tokenizer, "specials", {}).items():
        if i == token_id:
            return name
    return None
