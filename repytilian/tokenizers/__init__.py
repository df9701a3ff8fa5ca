"""Tokenizers and the registry that maps `-z` names to them.

Adding a tokenizer: write a `Tokenizer` subclass in its own module and add it to `REGISTRY`.
Optional libraries (tokenizers, tiktoken) are imported only when their tokenizer is used.
"""
from __future__ import annotations

from ..errors import RepytilianError
from .base import StreamDecoder, Tokenizer, UnknownTokensError
from .bpe import BPETokenizer
from .characters import CharacterTokenizer
from .gpt2 import GPT2Tokenizer, TiktokenTokenizer
from .json_tokens import JsonTokenizer
from .spaced_words import SpacedWordTokenizer
from .specials import WithSpecials
from .words import WordTokenizer

REGISTRY: dict[str, type[Tokenizer]] = {
    cls.name: cls for cls in (CharacterTokenizer, WordTokenizer, BPETokenizer, JsonTokenizer, TiktokenTokenizer,
                              GPT2Tokenizer, SpacedWordTokenizer)
}
# Other names for ours, taken in any case (models save the name in REGISTRY): the original
# Repytilian's, and the singulars and short forms people type (`-z char`, `-z BPE`)
ALIASES = {"jsontoken": "json", "char": "characters", "chars": "characters", "character": "characters",
           "word": "words"}
DEFAULT_TOKENIZER = "characters"


def tokenizer_class(name: str) -> type[Tokenizer]:
    key = name.lower() if isinstance(name, str) else name
    try:
        return REGISTRY[ALIASES.get(key, key)]
    except (KeyError, TypeError):
        raise RepytilianError(f"unknown tokenizer {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def tokenizer_from_json(text: str, kind: str | None = None, where: str = "tokenizer.json") -> Tokenizer:
    """Read a tokenizer.json; `kind` (from the model's config.json) is needed for formats without one."""
    if kind is None:
        import json

        try:
            kind = json.loads(text).get("kind")
        except (ValueError, AttributeError):
            raise RepytilianError(f"{where} is not valid JSON") from None
        if kind is None:
            raise RepytilianError(f"{where} does not say which tokenizer it is (no 'kind')")
    cls = tokenizer_class(kind)
    specials = _specials_of(text, cls, where)
    tokenizer = cls.from_json(text, where)
    return WithSpecials(tokenizer, specials) if specials else tokenizer


def _specials_of(text: str, cls: type[Tokenizer], where: str) -> list[str]:
    """The reserved special tokens a tokenizer.json lists (BPE keeps real ones in its own format)."""
    if cls is BPETokenizer or '"specials"' not in text:
        return []
    import json

    try:
        names = json.loads(text).get("specials") or []
    except (ValueError, AttributeError):
        return []  # from_json says what is wrong with the file
    if not isinstance(names, list):
        raise RepytilianError(f"{where}: 'specials' must be a list of token names")
    return names


__all__ = [
    "REGISTRY",
    "DEFAULT_TOKENIZER",
    "Tokenizer",
    "StreamDecoder",
    "UnknownTokensError",
    "CharacterTokenizer",
    "WordTokenizer",
    "SpacedWordTokenizer",
    "BPETokenizer",
    "JsonTokenizer",
    "GPT2Tokenizer",
    "TiktokenTokenizer",
    "tokenizer_class",
    "tokenizer_from_json",
]
