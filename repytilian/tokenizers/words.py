"""Word-level tokenizer: words, and each whitespace or punctuation character between them, are tokens.

Splitting into words (`\\w+`) and single non-word characters keeps every character of the text,
so `decode(encode(text)) == text` for any text made of known tokens, newlines included.
Words are case-sensitive: "Luke" and "luke" are different tokens.

Scripts written without spaces between words (Chinese, Japanese, Thai, Lao, Khmer, Burmese) have
no words to split at, so each of their characters is a token: a sentence is not one "word" seen
once. Korean, written with spaces, splits into words as other scripts do.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from .base import (
    Tokenizer,
    UnknownTokensError,
    check_vocab,
    reject_options,
    text_chunks,
)

# The characters of scripts without spaces, as literal ranges (the pattern is also given to the
# `tokenizers` library's regex engine by the Hugging Face export)
NO_SPACE_SCRIPTS = ("\u0e00-\u0eff"  # Thai, Lao
                    "\u1000-\u109f"  # Myanmar
                    "\u1780-\u17ff"  # Khmer
                    "\u3040-\u30ff"  # Hiragana, Katakana
                    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
                    "\uff66-\uff9f")  # half-width Katakana
TOKEN_PATTERN = re.compile(f"[{NO_SPACE_SCRIPTS}]|[^\\W{NO_SPACE_SCRIPTS}]+|\\W", re.UNICODE)


def split_words(text: str) -> list[str]:
    return TOKEN_PATTERN.findall(text)


class WordTokenizer(Tokenizer):
    name = "words"

    def __init__(self, vocab: list[str]):
        check_vocab(vocab, self.name)
        self.itos = list(vocab)
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    @classmethod
    def train(cls, corpus: str, **options: Any) -> "WordTokenizer":
        return cls.train_chunks(text_chunks(corpus), **options)

    @classmethod
    def train_chunks(cls, chunks: Iterable[str], **options: Any) -> "WordTokenizer":
        reject_options(cls.name, options)
        vocab: set[str] = set()
        for chunk in chunks:
            vocab.update(split_words(chunk))
        return cls(sorted(vocab))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        pieces = split_words(text)
        stoi = self.stoi
        try:
            return [stoi[p] for p in pieces]
        except KeyError:
            raise UnknownTokensError(self._unknown_message(pieces)) from None

    def _unknown_message(self, pieces: list[str]) -> str:
        missing = list(dict.fromkeys(p for p in pieces if p not in self.stoi))
        parts = []
        for word in missing[:10]:
            close = self.closest(word)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            parts.append(f"{word!r}{hint}")
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        noun = "words" if len(missing) > 1 else "word"
        return (
            f"unknown {noun} {', '.join(parts)}{more}: a words-tokenized model only knows the words "
            "of its training text (they are case-sensitive)"
        )

    def closest(self, word: str, n: int = 3) -> list[str]:
        """Known words nearest to an unknown one: same word in another case first, then by spelling."""
        same_case_fold = [w for w in self.itos if w.casefold() == word.casefold()]
        rest = difflib.get_close_matches(word, self.itos, n=n, cutoff=0.75)
        return list(dict.fromkeys(same_case_fold + rest))[:n]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"vocab": self.itos}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WordTokenizer":
        return cls(data.get("vocab"))
