import json

import numpy as np
import pytest

from repytilian.errors import RepytilianError
from repytilian.tokenizers import (
    REGISTRY,
    CharacterTokenizer,
    UnknownTokensError,
    WordTokenizer,
    tokenizer_class,
    tokenizer_from_json,
)

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n  Tabs\there!\n"


@pytest.mark.parametrize("cls", [CharacterTokenizer, WordTokenizer])
def test_round_trip_keeps_every_character(cls):
    tok = cls.train(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.decode(tok.encode("Speak,\nspeak.")) == "Speak,\nspeak."


@pytest.mark.parametrize("cls", [CharacterTokenizer, WordTokenizer])
def test_json_round_trip_gives_the_same_vocabulary(cls):
    tok = cls.train(TEXT)
    again = tokenizer_from_json(tok.to_json())
    assert type(again) is cls
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert json.loads(tok.to_json())["kind"] == cls.name


def test_characters_vocabulary_is_the_sorted_distinct_characters():
    tok = CharacterTokenizer.train("banana\n")
    assert tok.itos == ["\n", "a", "b", "n"]
    assert tok.encode("nab") == [3, 1, 2]


def test_encode_array_matches_encode_and_picks_a_small_dtype():
    tok = CharacterTokenizer.train(TEXT + "é😀")
    arr = tok.encode_array(TEXT + "😀é")
    assert arr.dtype == np.uint16
    assert arr.tolist() == tok.encode(TEXT + "😀é")


def test_ids_past_uint16_use_uint32():
    tok = WordTokenizer([f"w{i}" for i in range(70_000)])
    assert tok.id_dtype == np.uint32


def test_words_are_words_and_separators():
    tok = WordTokenizer.train("Hello, world!\nHello again")
    pieces = [tok.itos[i] for i in tok.encode("Hello, world!\n")]
    assert pieces == ["Hello", ",", " ", "world", "!", "\n"]


def test_unknown_characters_are_named():
    tok = CharacterTokenizer.train("abc")
    with pytest.raises(UnknownTokensError, match=r"'x'.*'z'"):
        tok.encode("axbz")
    with pytest.raises(UnknownTokensError, match="'x'"):
        tok.encode_array("abx")


def test_unknown_word_suggests_the_closest_known_words():
    tok = WordTokenizer.train("Luke walks. Leia runs.")
    with pytest.raises(UnknownTokensError) as err:
        tok.encode("luke")
    message = str(err.value)
    assert "'luke'" in message and "did you mean 'Luke'" in message
    assert isinstance(err.value, RepytilianError)


def test_registry_knows_the_tokenizers_and_rejects_others():
    assert {"characters", "words"} <= set(REGISTRY)
    with pytest.raises(RepytilianError, match="unknown tokenizer 'bytes'.*characters"):
        tokenizer_class("bytes")
    # `-z BPE`, `-z char`, `-z word` were "unknown tokenizer": the names people type are taken
    for typed, meant in [("BPE", "bpe"), ("char", "characters"), ("Chars", "characters"), ("word", "words"),
                         ("jsontoken", "json")]:
        assert tokenizer_class(typed) is REGISTRY[meant]
    with pytest.raises(RepytilianError, match="unknown tokenizer 5"):
        tokenizer_class(5)


@pytest.mark.parametrize("bad", ['{"kind": "characters", "vocab": []}', '{"kind": "characters", "vocab": ["a", "a"]}',
                                 '{"kind": "characters", "vocab": ["ab"]}', '{"vocab": ["a"]}', "not json",
                                 '{"kind": "words", "vocab": [1, 2]}'])
def test_damaged_tokenizer_json_is_a_clear_error(bad):
    with pytest.raises(RepytilianError):
        tokenizer_from_json(bad)


def test_empty_prompt_starts_from_a_newline():
    tok = CharacterTokenizer.train("ab\ncd")
    assert tok.start_ids() == tok.encode("\n")
