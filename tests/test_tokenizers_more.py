"""The bpe, json and gpt2 tokenizers, and JSON training data."""
import json

import pytest

from repytilian.data import DataSource, TokenData, load_corpus
from repytilian.data.jsondata import read_json_corpus
from repytilian.errors import RepytilianError, SettingError
from repytilian.tokenizers import (
    BPETokenizer,
    GPT2Tokenizer,
    JsonTokenizer,
    UnknownTokensError,
    tokenizer_from_json,
)
from repytilian.tokenizers import gpt2 as gpt2_module

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 30


# --- bpe ---------------------------------------------------------------------------------------

def test_bpe_learns_the_vocabulary_size_asked_for():
    tok = BPETokenizer.train(TEXT, vocab_size=300)
    assert tok.vocab_size == 300
    assert len(tok.encode(TEXT)) < len(TEXT) / 2  # merges compress


def test_bpe_file_is_a_standard_hugging_face_tokenizer_json(tmp_path):
    import tokenizers

    tok = BPETokenizer.train(TEXT, vocab_size=300)
    tok.save(tmp_path / "tokenizer.json")
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert hf.encode("the question").ids == tok.encode("the question")
    again = tokenizer_from_json((tmp_path / "tokenizer.json").read_text(), kind="bpe")
    assert again.encode(TEXT) == tok.encode(TEXT)


def test_bpe_rejects_a_vocabulary_smaller_than_the_bytes():
    with pytest.raises(RepytilianError, match="at least 257"):
        BPETokenizer.train(TEXT, vocab_size=100)


def test_bpe_stream_never_shows_half_a_character():
    tok = BPETokenizer.train(TEXT, vocab_size=300)
    text = "snow ❄ and 漢字 and 😀!"
    ids = tok.encode(text)
    assert len(ids) > len(text) - 5  # unseen characters are several byte tokens each
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_vocab_size_is_refused_for_tokenizers_without_one():
    from repytilian.tokenizers import CharacterTokenizer

    # in the library's words (a Python caller gave the keyword vocab_size; the command line says --vocab-size,
    # tests/test_bad_inputs.py): it said "--vocab-size" to Python callers too
    with pytest.raises(RepytilianError, match="`vocab_size` does not apply to the characters tokenizer") as refused:
        CharacterTokenizer.train("abc", vocab_size=10)
    assert refused.value.settings == ("vocab_size",)
    with pytest.raises(SettingError, match="vocab_size must be a whole number, got '512'"):  # was a TypeError deep inside
        BPETokenizer.train("abc", vocab_size="512")


# --- json data and tokenizer ---------------------------------------------------------------------

CHORDS = [[60, 64, 67], [62, 65, 69], [64, 67, 71], "rest", {"note": 72, "len": 2}]


def write(tmp_path, name, value):
    path = tmp_path / name
    path.write_text(json.dumps(value) if not isinstance(value, str) else value, encoding="utf-8")
    return path


def test_original_value_list_format(tmp_path):
    path = write(tmp_path, "song.json", {"value_list": CHORDS * 3})
    corpus = read_json_corpus("file", str(path))
    assert corpus.train == [CHORDS * 3] and corpus.val is None
    tok = JsonTokenizer.train(corpus)
    assert tok.eos_id is None and tok.vocab_size == 5  # one sequence: nothing to end


def test_array_of_tokens_with_objects_and_key_order(tmp_path):
    path = write(tmp_path, "a.json", ["C4", {"b": 1, "a": 2}, {"a": 2, "b": 1}, 3])
    tok = JsonTokenizer.train(read_json_corpus("file", str(path)))
    assert tok.vocab_size == 3  # the two objects are the same token


def test_many_sequences_with_a_validation_part_end_with_eos(tmp_path):
    doc = {"train": [CHORDS, CHORDS[::-1], CHORDS[:2]], "valid": [CHORDS[1:]]}
    path = write(tmp_path, "pieces.json", doc)
    corpus = read_json_corpus("file", str(path), key="train", val_key="valid")
    assert len(corpus.train) == 3 and corpus.val == [CHORDS[1:]]
    tok = JsonTokenizer.train(corpus)
    data = TokenData.from_corpus(corpus, tok)
    assert len(data.train) == 5 + 5 + 2 + 3 and len(data.val) == 4 + 1
    assert data.train[5] == tok.eos_id and data.val[-1] == tok.eos_id
    assert tok.start_ids() == [tok.eos_id]


def test_array_of_arrays_is_ambiguous_and_the_flag_decides(tmp_path, caplog):
    path = write(tmp_path, "chords.json", [[60, 64, 67], [62, 65, 69], [60, 64, 67]])
    guessed = read_json_corpus("file", str(path))
    assert len(guessed.train) == 3  # read as three sequences of numbers...
    assert "`json_layout` sequence" in caplog.text  # ...and the user is told how to flip it (the CLI: --json-layout)
    chords = read_json_corpus("file", str(path), layout="sequence")
    assert chords.train == [[[60, 64, 67], [62, 65, 69], [60, 64, 67]]]
    assert JsonTokenizer.train(chords).vocab_size == 2
    with pytest.raises(RepytilianError, match="item 0 is not an array"):
        read_json_corpus("file", str(write(tmp_path, "flat.json", [1, 2])), layout="sequences")


def test_folder_of_json_files(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    write(tmp_path / "d", "1.json", {"value_list": ["a", "b"]})
    write(tmp_path / "d" / "sub", "2.json", ["c", "d"])
    write(tmp_path / "d", "notes.txt", "ignored")
    corpus = load_corpus(DataSource("dir", str(tmp_path / "d")), "json")
    assert corpus.train == [["a", "b"], ["c", "d"]]
    assert JsonTokenizer.train(corpus).eos_id == 4  # two pieces: each ends with the end token


@pytest.mark.parametrize("content, kwargs, message", [
    ('{"a": [1, 2,, 3]}', {}, r"bad.json: invalid JSON at line 1, column 13"),
    ('{"train": [[1]]}', {"key": "tracks"}, r"has no key 'tracks' \(its keys: 'train'\)"),
    ('{"train": [[1]]}', {}, "name the key that holds the tokens with `json_key`"),
    ('[[], []]', {}, "no tokens to train on"),
    ('{"train": [[1]], "valid": [[]]}', {"key": "train", "val_key": "valid"}, "validation part .* has no tokens"),
    ('"just a string"', {}, "expected an array"),
    ('[1, 2]', {"key": "train"}, "need a JSON object"),
])
def test_bad_json_data_is_a_clear_error(tmp_path, content, kwargs, message):
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(RepytilianError, match=message):
        read_json_corpus("file", str(path), **kwargs)


def test_json_needs_a_file_or_folder():
    with pytest.raises(RepytilianError, match="trains on JSON data"):
        load_corpus(DataSource("dataset", "shakespeare"), "json")


def test_json_prompts_and_output(tmp_path):
    tok = JsonTokenizer.train(read_json_corpus("file", str(write(tmp_path, "s.json", [CHORDS, CHORDS]))))
    ids = tok.encode('[[60, 64, 67], "rest"]')
    assert json.loads(tok.decode(ids)) == [[60, 64, 67], "rest"]
    with pytest.raises(UnknownTokensError, match=r"\[1,2,3\].*only knows the tokens"):
        tok.encode('[[1, 2, 3], "rest"]')
    with pytest.raises(RepytilianError, match="must be a JSON array"):
        tok.encode('"rest"')
    with pytest.raises(RepytilianError, match="not valid JSON"):
        tok.encode("[60, ")
    decoder = tok.stream_decoder()
    shown = decoder.head("[60]", ids) + "".join(decoder.push(i) for i in ids + [tok.eos_id]) + decoder.close()
    assert json.loads(shown) == [[60, 64, 67], "rest", [60, 64, 67], "rest"]


# --- gpt2 ---------------------------------------------------------------------------------------

def test_gpt2_without_its_encoding_says_so_and_how_to_fix_it():
    with pytest.raises(RepytilianError, match="'gpt2' encoding is not on this machine.*`tokenizer` bpe"):
        GPT2Tokenizer.train("text")


def small_gpt2_like_encoding():
    """A byte-level tiktoken encoding made here (GPT-2's real files need the network)."""
    import tiktoken

    pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"th"] = 256
    ranks[b"the"] = 257
    return tiktoken.Encoding(name="gpt2", pat_str=pattern, mergeable_ranks=ranks, special_tokens={})


def test_gpt2_with_a_local_encoding_round_trips_and_saves(monkeypatch):
    monkeypatch.setattr(gpt2_module, "load_encoding", lambda name="gpt2": small_gpt2_like_encoding())
    tok = GPT2Tokenizer.train("ignored")
    assert tok.vocab_size == 258
    assert tok.decode(tok.encode("the theme 😀")) == "the theme 😀"
    assert tokenizer_from_json(tok.to_json()).encode("the") == [257]


# --- the original Repytilian's names: tiktoken (o200k_base) and jsontoken ------------------------

def small_encoding_named(name: str):
    import tiktoken

    base = small_gpt2_like_encoding()
    return tiktoken.Encoding(name=name, pat_str=base._pat_str, mergeable_ranks=base._mergeable_ranks,
                             special_tokens={})


def test_tiktoken_uses_the_seeds_o200k_base_unless_told_another_encoding(monkeypatch):
    from repytilian.tokenizers import TiktokenTokenizer, tokenizer_class

    asked = []
    monkeypatch.setattr(gpt2_module, "load_encoding", lambda name: asked.append(name) or small_encoding_named(name))
    assert tokenizer_class("tiktoken") is TiktokenTokenizer
    seed_default = TiktokenTokenizer.train("ignored")
    other = TiktokenTokenizer.train("ignored", encoding="cl100k_base")
    assert asked == ["o200k_base", "cl100k_base"]
    again = tokenizer_from_json(other.to_json())  # the saved encoding is the one loaded back
    assert asked[-1] == "cl100k_base" and again.decode(again.encode("the end")) == "the end"
    assert seed_default.to_dict() == {"encoding": "o200k_base"}
    with pytest.raises(RepytilianError, match="`encoding` does not apply to the gpt2 tokenizer"):
        GPT2Tokenizer.train("ignored", encoding="o200k_base")


def test_tiktoken_without_its_encoding_is_one_line_naming_the_cache_and_bpe(tmp_path, monkeypatch):
    from conftest import run_script

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("REPYTILIAN_OFFLINE", "1")
    (tmp_path / "t.txt").write_text("some text to train on\n" * 50)
    r = run_script("training.py", "-d", str(tmp_path / "t.txt"), "-z", "tiktoken", "-m", "", cwd=tmp_path)
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "'o200k_base'" in line and "TIKTOKEN_CACHE_DIR" in line and "-z bpe" in line
    unknown = run_script("training.py", "-d", str(tmp_path / "t.txt"), "-z", "tiktoken", "--encoding", "nope",
                         "-m", "", cwd=tmp_path)
    assert unknown.returncode == 2 and "no encoding 'nope'" in unknown.stderr


def test_jsontoken_is_the_json_tokenizer_under_the_seeds_name(tmp_path):
    import json as jsonlib

    from conftest import run_script
    data = tmp_path / "music.json"
    data.write_text(jsonlib.dumps([[["C4", 1], ["E4", 1], ["G4", 2]] * 30]))
    r = run_script("training.py", "-d", str(data), "-z", "jsontoken", "-s", "tiny", "-i", "quick",
                   "--set", "n_layer=1", "--set", "n_embd=16", "--set", "n_head=2", "--set", "block_size=8",
                   "-t", "0", "-m", str(tmp_path / "m"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert jsonlib.loads((tmp_path / "m" / "config.json").read_text())["tokenizer"] == "json"
    again = run_script("training.py", "-l", str(tmp_path / "m"), "-z", "jsontoken", "-i", "quick", "-t", "0",
                       "-m", str(tmp_path / "m"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # -l with the seed's name for the same tokenizer


def test_json_data_read_as_text_says_how_to_train_on_its_tokens(tmp_path):
    from conftest import TINY, run_script

    from repytilian.data.jsondata import looks_like_token_data

    write(tmp_path, "music.json", [[60, 62, 64, 65, 67] * 80, [48, 50, 52] * 80])
    r = run_script("training.py", "-d", "music.json", "-m", "m", "--iters", "1", "-t", "0", *TINY, cwd=tmp_path)
    # was: trained on the file's characters ("[", "6", "0", ", ") without a word about it
    assert r.returncode == 0 and "music.json is JSON" in r.stderr and "-z json" in r.stderr, r.stderr
    r = run_script("training.py", "-z", "json", "-d", "music.json", "-m", "j", "--iters", "1", "-t", "0", *TINY,
                   cwd=tmp_path)
    assert r.returncode == 0 and "is JSON" not in r.stderr, r.stderr
    (tmp_path / "folder").mkdir()
    write(tmp_path / "folder", "a.json", {"value_list": [1, 2]})
    (tmp_path / "text.json").write_text("not JSON at all, a story", encoding="utf-8")
    assert looks_like_token_data("dir", str(tmp_path / "folder"))
    assert not looks_like_token_data("file", str(tmp_path / "text.json"))
    write(tmp_path / "folder", "notes.txt", "words")
    assert not looks_like_token_data("dir", str(tmp_path / "folder"))  # text beside it: a folder of text


def test_a_bpe_that_runs_out_of_pairs_says_how_many_tokens_it_learned(caplog, tmp_path):
    from repytilian.data.corpus import train_tokenizer

    tokenizer = train_tokenizer(BPETokenizer, TEXT, vocab_size=100_000)  # was: fewer tokens without a word
    assert tokenizer.vocab_size < 100_000
    assert f"the bpe tokenizer learned {tokenizer.vocab_size:,} tokens of the 100,000 asked for" in caplog.text
    caplog.clear()
    train_tokenizer(BPETokenizer, TEXT * 4, vocab_size=300)
    assert "tokenizer learned" not in caplog.text
