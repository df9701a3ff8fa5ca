"""Round trips on random input (hypothesis), and chunked encoding equal to whole-text encoding."""
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from repytilian.data.jsondata import JsonCorpus
from repytilian.tokenizers import (
    BPETokenizer,
    CharacterTokenizer,
    JsonTokenizer,
    WordTokenizer,
)
from repytilian.tokenizers.base import text_chunks
from repytilian.tokenizers.json_tokens import canonical

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BPE = BPETokenizer.train("A small corpus to learn a few merges from: the the the and and, ünïcödé 漢字 😀\n" * 20,
                         vocab_size=300)


@SETTINGS
@given(st.text(min_size=1))
def test_characters_round_trip(text):
    tok = CharacterTokenizer.train(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode_array(text).tolist()) == text


@SETTINGS
@given(st.text(min_size=1))
def test_words_round_trip(text):
    tok = WordTokenizer.train(text)
    assert tok.decode(tok.encode(text)) == text


@SETTINGS
@given(st.text())
def test_bpe_round_trips_any_unicode_without_training_on_it(text):
    assert BPE.decode(BPE.encode(text)) == text


@SETTINGS
@given(st.text(alphabet=st.sampled_from("ab \n\t.,'é漢"), max_size=400), st.integers(4, 40))
def test_chunked_encoding_equals_whole_text_encoding(text, size):
    chunks = list(text_chunks(text, size))
    assert "".join(chunks) == text
    words = WordTokenizer.train(text) if text else None
    if words:
        assert [i for c in chunks for i in words.encode(c)] == words.encode(text)
    assert [i for c in chunks for i in BPE.encode(c)] == BPE.encode(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


@SETTINGS
@given(st.lists(st.lists(json_values, min_size=1, max_size=8), min_size=1, max_size=4))
def test_json_round_trip(sequences):
    tok = JsonTokenizer.train(JsonCorpus(train=sequences, val=None, chars=0, sha256=""))
    for seq in sequences:
        ids = tok.encode(json.dumps(seq))
        assert [canonical(v) for v in json.loads(tok.decode(ids))] == [canonical(v) for v in seq]
    again = JsonTokenizer.from_json(tok.to_json())
    assert again.tokens == tok.tokens and again.eos_id == tok.eos_id
