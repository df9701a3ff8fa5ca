"""Tokenizers and the registry that maps `-z` names to them.

Adding a tokenizer: write a `Tokenizer` subclass in its own module and add it to `REGISTRY`.
"""
from __future__ import annotations

import json
from typing import Any

from ..errors import RepytilianError
from .base import Tokenizer, UnknownTokensError
from .characters import CharacterTokenizer
from .words import WordTokenizer

REGISTRY: dict[str, type[Tokenizer]] = {
    cls.name: cls for cls in (CharacterTokenizer, WordTokenizer)
}
DEFAULT_TOKENIZER = "characters"


def tokenizer_class(name: str) -> type[Tokenizer]:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise RepytilianError(f"unknown tokenizer {name!r}; choose one of: {known}") from None


def tokenizer_from_json(text: str, where: str = "tokenizer.json") -> Tokenizer:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise RepytilianError(f"{where} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or "kind" not in data:
        raise RepytilianError(f"{where} does not describe a tokenizer (no 'kind')")
    return tokenizer_class(data["kind"]).from_dict(data)


__all__ = [
    "REGISTRY",
    "DEFAULT_TOKENIZER",
    "Tokenizer",
    "UnknownTokensError",
    "CharacterTokenizer",
    "WordTokenizer",
    "tokenizer_class",
    "tokenizer_from_json",
]
