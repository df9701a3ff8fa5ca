"""Issue 29, item 3: text kept as JSONL or Parquet records trains as text does, streamed when large,
and a broken record is one clear line naming the file and the line or row."""
from __future__ import annotations

import json

import pytest
from conftest import TINY, run_script

from repytilian.data.corpus import DataSource, TokenData, load_corpus
from repytilian.data.textfiles import TextFiles
from repytilian.tokenizers import CharacterTokenizer

DOCS = ["the king and the queen.", "my lady speaks\r\nof love!", "a fool laughs at the moon\n"] * 40
TEXT = "".join(d.replace("\r\n", "\n") + ("" if d.endswith("\n") else "\n") for d in DOCS)


def write_jsonl(path, docs=DOCS, field="text"):
    path.write_text("".join(json.dumps({"id": i, field: d}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


def test_jsonl_and_parquet_read_as_the_text_of_their_records(tmp_path, monkeypatch):
    jsonl = write_jsonl(tmp_path / "docs.jsonl")
    assert load_corpus(DataSource("file", str(jsonl))) == TEXT  # each record ends with a line break
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(DOCS))), "body": DOCS}), tmp_path / "docs.parquet",
                   row_group_size=7)  # several row groups, read a batch at a time
    assert load_corpus(DataSource("file", str(tmp_path / "docs.parquet"), text_field="body")) == TEXT
    # Large: streamed a piece at a time (textfiles.TextFiles), the same text and the same ids
    monkeypatch.setenv("REPYTILIAN_STREAM_MB", "0.0001")
    streamed = load_corpus(DataSource("file", str(jsonl)))
    assert isinstance(streamed, TextFiles) and "".join(streamed.pieces()) == TEXT
    tokenizer = CharacterTokenizer.train(TEXT)
    whole = TokenData.from_corpus(TEXT, tokenizer)
    assert (TokenData.from_corpus(streamed, tokenizer).train == whole.train).all()


def test_a_folder_mixes_text_files_and_records(tmp_path):
    (tmp_path / "d").mkdir()
    write_jsonl(tmp_path / "d" / "a.jsonl", DOCS[:3])
    (tmp_path / "d" / "b.txt").write_text("plain text")
    assert load_corpus(DataSource("dir", str(tmp_path / "d"))) == TEXT[: len("".join(TEXT.splitlines(True)[:4]))] \
        + "plain text\n"


@pytest.mark.parametrize("lines,words", [
    (['{"text": "fine"}', '{"text": "broken'], "docs.jsonl: line 2 is not JSON"),
    (['{"text": "fine"}', '{"body": "no text here"}'], "docs.jsonl: line 2 has no field 'text' (it has 'body')"),
    (['{"text": 7}'], "docs.jsonl: line 1: the field 'text' holds a number, not text"),  # was "a int"
    (['{"text": {"a": 1}}'], "docs.jsonl: line 1: the field 'text' holds an object, not text"),
    (['{"text": null}'], "docs.jsonl: line 1: the field 'text' holds nothing (null), not text"),
    (['["a list"]'], "docs.jsonl: line 1 is not a JSON object with a 'text' field"),
    # conversations given as text: the chat fine-tune that takes them is named
    (['{"messages": [{"role": "user", "content": "hi"}]}'], "(it has 'messages'); --text-field names the one to "
     "train on; or, as these are conversations, fine-tune a model to chat on them: --chat with the model as -l"),
])
def test_a_broken_record_is_one_clear_line(tmp_path, lines, words):
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    r = run_script("training.py", "-d", "docs.jsonl", "-m", "m", "-t", "0", *TINY, cwd=tmp_path)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "d").mkdir()  # in a folder too: a broken record is told, not skipped as a binary file is
    (tmp_path / "docs.jsonl").rename(tmp_path / "d" / "docs.jsonl")
    (tmp_path / "d" / "more.txt").write_text("the king and queen " * 50)
    r = run_script("training.py", "-p", "d", "-m", "m", "-t", "0", *TINY, cwd=tmp_path)
    assert r.returncode == 2 and words in r.stderr, r.stderr


def test_parquet_rows_and_columns_are_named_when_wrong(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["fine", None]}), tmp_path / "docs.parquet")
    r = run_script("training.py", "-d", "docs.parquet", "-m", "m", "-t", "0", *TINY, cwd=tmp_path)
    assert r.returncode == 2 and "docs.parquet has no column 'text' (it has 'body'); --text-field" in r.stderr
    r = run_script("training.py", "-d", "docs.parquet", "--text-field", "body", "-m", "m", "-t", "0", *TINY,
                   cwd=tmp_path)
    assert r.returncode == 2 and "docs.parquet: row 2: the field 'body' holds nothing (null)" in r.stderr


def test_a_model_trained_on_records_continues_on_the_same_field(tmp_path):
    write_jsonl(tmp_path / "docs.jsonl", [d.replace("\r\n", " ") for d in DOCS] * 3, field="body")
    r = run_script("training.py", "-d", "docs.jsonl", "--text-field", "body", "-m", "m", "--iters", "4", "-t", "0",
                   *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    source = json.loads((tmp_path / "m" / "config.json").read_text())["data"]["source"]
    assert source["text_field"] == "body"
    again = run_script("training.py", "-l", "m", "-m", "m", "--iters", "2", "-t", "0", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
