"""JSON token lists: every token is any JSON value (a note name, a number, a chord `[60, 64, 67]`, an object).

Two tokens are the same when their canonical JSON (sorted keys, compact separators) is the same.
When the training data holds more than one sequence, an end-of-sequence token follows each, so
the model learns where pieces end; sampling it ends the generated piece. Prompts are JSON arrays
of tokens, and generated output is a JSON array, one token per line.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from ..errors import RepytilianError
from .base import StreamDecoder, Tokenizer, UnknownTokensError, reject_options

EOS = "<|end|>"  # not valid JSON, so it can never be the canonical form of a token


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def display(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


class JsonTokenizer(Tokenizer):
    name = "json"
    input_format = "json"

    def __init__(self, tokens: list[str], end_of_sequence: bool, start: str | None = None):
        if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
            raise RepytilianError("json tokenizer: 'tokens' must be a non-empty list of canonical JSON strings")
        if len(set(tokens)) != len(tokens) or EOS in tokens:
            raise RepytilianError("json tokenizer: the vocabulary has duplicate entries")
        self.tokens = list(tokens)
        self.values = [json.loads(t) for t in self.tokens]
        self.stoi = {t: i for i, t in enumerate(self.tokens)}
        self.end_of_sequence = bool(end_of_sequence)
        self.eos_id = len(self.tokens) if self.end_of_sequence else None
        if start is not None and start not in self.stoi:
            raise RepytilianError("json tokenizer: the start token is not in the vocabulary")
        self.start = start

    @classmethod
    def train(cls, corpus: Any, **options: Any) -> "JsonTokenizer":
        reject_options(cls.name, options)
        sequences = list(corpus.train) + list(corpus.val or [])
        vocab = sorted({canonical(tok) for seq in sequences for tok in seq})
        many = len(sequences) > 1
        start = None if many else canonical(sequences[0][0])
        return cls(vocab, end_of_sequence=many, start=start)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens) + (1 if self.end_of_sequence else 0)

    def encode_values(self, values: Iterable[Any]) -> list[int]:
        forms = [canonical(v) for v in values]
        try:
            return [self.stoi[f] for f in forms]
        except KeyError:
            missing = list(dict.fromkeys(f for f in forms if f not in self.stoi))
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise UnknownTokensError(
                f"unknown token{'s' if len(missing) > 1 else ''} {shown}: this model only knows the tokens "
                "of its training data"
            ) from None

    def encode_sequences(self, sequences: Iterable[list[Any]]) -> np.ndarray:
        parts = []
        for seq in sequences:
            ids = self.encode_values(seq)
            if self.end_of_sequence:
                ids.append(self.eos_id)
            parts.append(np.asarray(ids, dtype=self.id_dtype))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.id_dtype)

    def encode(self, text: str) -> list[int]:
        """A prompt: a JSON array of tokens."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as e:
            raise RepytilianError(f"the prompt is not valid JSON (column {e.colno}: {e.msg}); "
                                  "give a JSON array of tokens, e.g. '[60, [60, 64, 67]]'") from None
        if not isinstance(values, list):
            raise RepytilianError("the prompt must be a JSON array of tokens, e.g. '[60, [60, 64, 67]]'")
        return self.encode_values(values)

    def decode_values(self, ids: Iterable[int]) -> list[Any]:
        return [self.values[i] for i in ids if i != self.eos_id]

    def decode(self, ids: Iterable[int]) -> str:
        values = self.decode_values(ids)
        if not values:
            return "[]"
        return "[\n" + ",\n".join("  " + display(v) for v in values) + "\n]"

    def start_ids(self) -> list[int]:
        return [self.eos_id] if self.end_of_sequence else [self.stoi[self.start or self.tokens[0]]]

    def stream_decoder(self) -> "JsonStreamDecoder":
        return JsonStreamDecoder(self)

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "end_of_sequence": self.end_of_sequence, "start": self.start}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JsonTokenizer":
        try:
            return cls(data["tokens"], data.get("end_of_sequence", False), data.get("start"))
        except (KeyError, json.JSONDecodeError) as e:
            raise RepytilianError(f"json tokenizer: damaged vocabulary ({e})") from None


class JsonStreamDecoder(StreamDecoder):
    """Shows prompt and generated tokens as one JSON array, a token per line, valid when closed."""

    def __init__(self, tokenizer: JsonTokenizer):
        super().__init__(tokenizer)
        self.count = 0

    def _item(self, token_id: int) -> str:
        if token_id == self.tokenizer.eos_id:
            return ""
        piece = ("," if self.count else "") + "\n  " + display(self.tokenizer.values[token_id])
        self.count += 1
        return piece

    def head(self, prompt: str, prompt_ids: list[int]) -> str:
        return "[" + ("".join(self._item(i) for i in prompt_ids) if prompt else "")

    def push(self, token_id: int) -> str:
        return self._item(token_id)

    def close(self) -> str:
        return "\n]" if self.count else "]"
