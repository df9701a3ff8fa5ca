"""Corpora larger than memory: read piece by piece, tokenized once into a memory-mapped cache."""
from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
from conftest import TINY, make_corpus, run_script

from repytilian.data import (
    DataSource,
    TokenData,
    load_corpus,
    read_text_dir,
    textfiles,
    tokencache,
    train_tokenizer,
)
from repytilian.data.textfiles import TextFiles, file_pieces
from repytilian.errors import RepytilianError
from repytilian.evaluate import count_chars
from repytilian.tokenizers import tokenizer_class
from repytilian.tokenizers.base import text_chunks


@pytest.fixture
def small_reads(monkeypatch):
    """Reads of a few bytes and chunks of a few hundred characters, so every boundary case occurs."""
    monkeypatch.setattr(textfiles, "READ_BYTES", 97)
    monkeypatch.setattr(tokencache, "ENCODE_CHUNK_CHARS", 300)


def mixed_folder(root):
    """Files that exercise the decoding rules: CRLF, a BOM, no final newline, blank lines, a
    multi-byte character at every offset, a long run with no safe cut, and files to skip."""
    root.mkdir()
    rng = random.Random(1)
    pieces = ["the", " ", "king", "\n", "\r\n", "é", "日本", "  ", "\n\n", "x" * 700, "?!", "🙂"]
    for i in range(6):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(50, 600)))
        data = text.encode("utf-8")
        (root / f"{i:02d}.txt").write_bytes(b"\xef\xbb\xbf" + data if i == 2 else data)
    (root / "sub").mkdir()
    (root / "sub" / "last.txt").write_text(make_corpus(30), encoding="utf-8")
    (root / "sub" / "image.bin").write_bytes(b"\x89PNG\x00\x00garbage")
    (root / "sub" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return root


def test_file_pieces_decode_exactly_as_one_read_whatever_the_read_size(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "t.txt"
    for trial in range(60):
        text = "".join(rng.choice(["a", "\r\n", "\r", "é", "日本", "🙂", "\n"]) for _ in range(rng.randint(1, 300)))
        raw = (b"\xef\xbb\xbf" if trial % 3 == 0 else b"") + text.encode("utf-8")
        path.write_bytes(raw)
        for size in (1, 2, 3, 5, 64):
            assert "".join(file_pieces(path, size)) == raw.decode("utf-8-sig").replace("\r\n", "\n")


def test_a_bad_byte_is_reported_at_its_offset_in_the_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(("abcé" * 3000).encode("utf-8") + b"\xff tail")
    for size in (1, 4, 4096):
        with pytest.raises(RepytilianError, match="byte 0xff at offset 15000"):
            "".join(file_pieces(path, size))


@pytest.mark.parametrize("name", ["characters", "words", "bpe"])
def test_streamed_ids_equal_the_in_memory_ids(tmp_path, small_reads, name, caplog):
    folder = mixed_folder(tmp_path / "data")
    text = read_text_dir(folder)
    corpus = TextFiles.scan(textfiles.text_files_under(folder), newline_after_each=True, root=folder)
    assert "skipped 2" in caplog.text
    assert (corpus.sha256, corpus.chars) == (hashlib.sha256(text.encode("utf-8")).hexdigest(), len(text))
    assert "".join(corpus.chunks(300)) == text
    assert list(corpus.chunks(300)) == list(text_chunks(text, 300))  # the same safe cuts

    options = {"vocab_size": 300} if name == "bpe" else {}
    cls = tokenizer_class(name)
    tokenizer = train_tokenizer(cls, corpus, **options)
    assert tokenizer.to_json() == cls.train(text, **options).to_json()
    streamed, in_memory = TokenData.from_corpus(corpus, tokenizer), TokenData.from_corpus(text, tokenizer)
    assert isinstance(streamed.train, np.memmap)
    assert np.array_equal(streamed.train, in_memory.train) and np.array_equal(streamed.val, in_memory.val)
    assert (streamed.sha256, streamed.chars) == (in_memory.sha256, in_memory.chars)
    assert count_chars(tokenizer, np.asarray(streamed.val), chunk=7) == len(tokenizer.decode(in_memory.val.tolist()))


def test_a_second_run_takes_tokenizer_and_ids_from_the_cache(tmp_path, small_reads, monkeypatch):
    folder = mixed_folder(tmp_path / "data")
    corpus = TextFiles.scan(textfiles.text_files_under(folder), newline_after_each=True, root=folder)
    cls = tokenizer_class("words")
    first = TokenData.from_corpus(corpus, train_tokenizer(cls, corpus))

    def no_second_pass(*args, **kwargs):
        raise AssertionError("the text was read again")

    monkeypatch.setattr(TextFiles, "chunks", no_second_pass)
    again = TokenData.from_corpus(corpus, train_tokenizer(cls, corpus))
    assert np.array_equal(first.train, again.train)


def test_an_entry_left_incomplete_is_built_again_and_abandoned_files_are_removed(tmp_path, small_reads):
    folder = mixed_folder(tmp_path / "data")
    corpus = TextFiles.scan(textfiles.text_files_under(folder), newline_after_each=True, root=folder)
    tokenizer = train_tokenizer(tokenizer_class("characters"), corpus)
    ids = np.asarray(TokenData.from_corpus(corpus, tokenizer, val_fraction=0).train).copy()
    cache = tokencache.corpus_cache_dir(corpus)
    meta = next(cache.glob("ids-*.json"))
    # A run killed while encoding: a partial id file without its meta, and its temporary file.
    meta.unlink()
    binary = meta.with_suffix(".bin")
    binary.write_bytes(binary.read_bytes()[:10])
    dead = cache / f".{meta.stem}.999999999.tmp"
    dead.write_bytes(b"half")
    rebuilt = TokenData.from_corpus(corpus, tokenizer, val_fraction=0).train
    assert np.array_equal(rebuilt, ids) and not dead.exists()
    # A meta that does not match its file is not trusted either.
    meta.write_text(json.dumps({"dtype": "<u2", "tokens": len(ids) + 5}))
    assert np.array_equal(TokenData.from_corpus(corpus, tokenizer, val_fraction=0).train, ids)


def test_a_full_disk_while_encoding_is_a_clear_error_and_leaves_no_partial_entry(tmp_path, small_reads, monkeypatch):
    folder = mixed_folder(tmp_path / "data")
    corpus = TextFiles.scan(textfiles.text_files_under(folder), newline_after_each=True, root=folder)
    tokenizer = train_tokenizer(tokenizer_class("characters"), corpus)

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tokencache.os, "fsync", full)
    with pytest.raises(RepytilianError, match="cannot write the token cache .*No space left"):
        TokenData.from_corpus(corpus, tokenizer)
    assert [p.name for p in tokencache.corpus_cache_dir(corpus).iterdir() if "ids" in p.name] == []


def test_only_large_text_is_streamed(tmp_path, monkeypatch, corpus_file):
    assert isinstance(load_corpus(DataSource("file", str(corpus_file))), str)
    monkeypatch.setenv("REPYTILIAN_STREAM_MB", "0.001")
    assert isinstance(load_corpus(DataSource("file", str(corpus_file))), TextFiles)
    assert isinstance(load_corpus(DataSource("file", str(corpus_file)), stream=False), str)
    monkeypatch.setenv("REPYTILIAN_STREAM_MB", "lots")
    with pytest.raises(RepytilianError, match="REPYTILIAN_STREAM_MB"):
        load_corpus(DataSource("file", str(corpus_file)))


def test_training_and_eval_on_a_streamed_folder_from_the_command_line(tmp_path, monkeypatch):
    folder = tmp_path / "books"
    folder.mkdir()
    for i in range(3):
        (folder / f"book{i}.txt").write_text(make_corpus(300, seed=i), encoding="utf-8")
    monkeypatch.setenv("REPYTILIAN_STREAM_MB", "0.01")
    args = ["training.py", "-p", str(folder), "-z", "words", "-m", "m", "-i", "quick", *TINY]
    first = run_script(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "encoding" in first.stderr and "val loss over the whole validation split" in first.stderr
    second = run_script(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "token ids from the cache" in second.stderr and "encoding" not in second.stderr
    scored = run_script("eval", "-m", "m", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    assert "validation split of folder" in scored.stdout and "bits per character" in scored.stdout


@pytest.mark.slow
def test_a_100_mb_file_without_a_newline_trains(tmp_path):
    """One line of 100 MB: streamed (it is over the threshold), cut at spaces, and trained on."""
    path = tmp_path / "one-line.txt"
    words = [w.encode() for w in make_corpus(50).split()]
    line = b" ".join(words)
    with open(path, "wb") as f:
        while f.tell() < 100 * 2**20:
            f.write(line + b" ")
    result = run_script("training.py", "-d", str(path), "-m", "m", "-i", "quick", *TINY, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "encoding 100 MB" in result.stderr
    assert "val loss over the first 65,537 of the validation split's" in result.stderr  # a quick run: a quick evaluation


def test_batches_from_the_cache_are_read_from_the_file_and_equal_in_memory_batches(tmp_path, small_reads):
    import torch

    from repytilian.data import get_batch

    folder = mixed_folder(tmp_path / "data")
    corpus = TextFiles.scan(textfiles.text_files_under(folder), newline_after_each=True, root=folder)
    tokenizer = train_tokenizer(tokenizer_class("characters"), corpus)
    streamed = TokenData.from_corpus(corpus, tokenizer)
    for split in ("train", "val"):
        mapped = getattr(streamed, split)
        plain = np.array(mapped)
        a = get_batch(mapped, 5, 16, torch.Generator().manual_seed(3))
        b = get_batch(plain, 5, 16, torch.Generator().manual_seed(3))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
