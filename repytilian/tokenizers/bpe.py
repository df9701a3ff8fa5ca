"""Byte-level BPE trained on your corpus, by Hugging Face's `tokenizers` (a maintained Rust library).

Byte-level means the 256 bytes are all in the base vocabulary, so any Unicode text encodes and
`decode(encode(s)) == s` exactly: prompts never fail on unknown words. The model directory's
`tokenizer.json` is the library's own format, which `tokenizers.Tokenizer.from_file` loads as is.
`tokenizers` is an optional dependency (`pip install 'repytilian[bpe]'`).
"""
from __future__ import annotations

import json
import numbers
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RepytilianError, SettingError, check_type
from .base import Tokenizer, reject_options, text_chunks
from .specials import END_OF_TURN, check_names

DEFAULT_VOCAB_SIZE = 512
MIN_VOCAB_SIZE = 257  # the 256 bytes, plus at least one merge
ENCODE_CHUNK_CHARS = 1 << 14


def _hf():
    try:
        import tokenizers
    except ImportError:
        raise RepytilianError(
            "the bpe tokenizer needs the 'tokenizers' package: pip install 'repytilian[bpe]' "
            "(or pip install tokenizers)"
        ) from None
    return tokenizers


class BPETokenizer(Tokenizer):
    name = "bpe"

    def __init__(self, hf_tokenizer: Any):
        self.hf = hf_tokenizer
        # Text is text: `<|end|>` typed by a user encodes as its characters, never as the special
        # token (a setting of this object only: the saved tokenizer.json parses specials, as
        # transformers and llama.cpp expect when they render a chat template)
        self.hf.encode_special_tokens = True
        self.specials = {token.content: i for i, token in self.hf.get_added_tokens_decoder().items() if token.special}
        self.eos_id = self.specials.get(END_OF_TURN)

    @classmethod
    def train(cls, corpus: str, vocab_size: int | None = None, **options: Any) -> "BPETokenizer":
        return cls.train_chunks(text_chunks(corpus), vocab_size, **options)

    @classmethod
    def train_chunks(cls, chunks: Iterable[str], vocab_size: int | None = None, **options: Any) -> "BPETokenizer":
        tk = _hf()
        reject_options(cls.name, options)
        vocab_size = DEFAULT_VOCAB_SIZE if vocab_size is None else vocab_size
        check_type("vocab_size", vocab_size, numbers.Integral, "a whole number")
        if vocab_size < MIN_VOCAB_SIZE:
            raise SettingError("vocab_size", f"must be at least {MIN_VOCAB_SIZE} for byte-level BPE, got {vocab_size}")
        hf = tk.Tokenizer(tk.models.BPE())
        # No prefix space and no offset trimming: nothing is added or dropped, so decoding is exact.
        hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(chunks, trainer=trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def encode_array(self, text: str) -> np.ndarray:
        # Small chunks in batches: the Rust side encodes a batch in parallel, and is several times
        # faster on 16 KB pieces than on megabytes at once (measured: 1.5 -> 5 MB/s on 2 cores).
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # fast: no offsets
        parts, batch = [], []
        for chunk in text_chunks(text, ENCODE_CHUNK_CHARS):
            batch.append(chunk)
            if len(batch) == 256:
                parts.extend(np.asarray(e.ids, dtype=self.id_dtype) for e in encode(batch))
                batch = []
        if batch:
            parts.extend(np.asarray(e.ids, dtype=self.id_dtype) for e in encode(batch))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.id_dtype)

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)  # a special token shows as nothing

    def with_specials(self, names: list[str]) -> "BPETokenizer":
        """Real special tokens, added to the Hugging Face tokenizer (ids after its vocabulary)."""
        new = [n for n in names if n not in self.specials]
        if not new:
            return self
        check_names(new, self.hf.get_vocab())
        tk = _hf()
        hf = tk.Tokenizer.from_str(self.hf.to_str())
        hf.add_special_tokens([tk.AddedToken(n, special=True, normalized=False) for n in new])
        return BPETokenizer(hf)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.hf.to_str())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BPETokenizer":
        try:
            return cls(_hf().Tokenizer.from_str(json.dumps(data)))
        except Exception as e:  # the Rust side raises plain Exception for a malformed file
            raise RepytilianError(f"not a valid Hugging Face tokenizer.json ({e})") from None

    # The standard tokenizer.json has no "kind"; the model's config.json says "bpe".
    def to_json(self) -> str:
        return self.hf.to_str(pretty=True)

    @classmethod
    def from_json(cls, text: str, where: str = "tokenizer.json") -> "BPETokenizer":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise RepytilianError(f"{where} is not valid JSON ({e})") from None

    def save(self, path: Path) -> None:
        path.write_text(self.to_json(), encoding="utf-8")
