import hashlib
import urllib.error

import numpy as np
import pytest
import torch

from repytilian.data import (
    VAL_FRACTION,
    DataSource,
    TokenData,
    datasets,
    get_batch,
    load_text,
    read_text_dir,
    read_text_file,
)
from repytilian.errors import RepytilianError
from repytilian.tokenizers import CharacterTokenizer


def test_read_text_file_normalises_line_ends_and_bom(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes("\ufeffline one\r\nline two\r\n".encode("utf-8"))
    assert read_text_file(f) == "line one\nline two\n"


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary"),
    ("caf\u00e9".encode("latin-1"), "not UTF-8 text .*offset 3"),
])
def test_bad_files_are_clear_errors(tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(RepytilianError, match=message):
        read_text_file(f)


def test_missing_file_and_folder_given_as_file(tmp_path):
    with pytest.raises(RepytilianError, match="no such file"):
        read_text_file(tmp_path / "nope.txt")
    with pytest.raises(RepytilianError, match="use `data_path`"):
        read_text_file(tmp_path)
    with pytest.raises(RepytilianError, match="no such folder"):
        read_text_dir(tmp_path / "nope")


def test_directory_is_read_recursively_in_sorted_order_without_gluing_files(tmp_path, caplog):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "c.md").write_text("third\n", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("secret", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\x00\x00")
    assert read_text_dir(tmp_path) == "first\nsecond\nthird\n"
    assert "skipped 1" in caplog.text


def test_json_files_among_text_files_are_said_to_be_read_as_text(tmp_path, caplog):
    """A folder of chapters with a stray tokens.json (or metadata.json) trained on the JSON's characters
    without a word; a folder of .json files alone has its own note (runs/assemble.py)."""
    from repytilian.data.textfiles import TextFiles, text_files_under

    (tmp_path / "chapter.txt").write_text("Once upon a time\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("more\n", encoding="utf-8")
    (tmp_path / "tokens.json").write_text("[[1, 2, 3]]", encoding="utf-8")
    assert "[[1, 2, 3]]" in read_text_dir(tmp_path)
    said = "read 1 .json file in " + str(tmp_path) + " as text, with the rest: tokens.json"
    assert said in caplog.text
    caplog.clear()
    TextFiles.scan(text_files_under(tmp_path), newline_after_each=True, root=tmp_path)  # the streamed path
    assert said in caplog.text
    caplog.clear()
    (tmp_path / "tokens.json").unlink()
    read_text_dir(tmp_path)
    assert ".json" not in caplog.text


def test_directory_without_text_is_an_error(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x00\x01")
    with pytest.raises(RepytilianError, match="no UTF-8 text files"):
        read_text_dir(tmp_path)


def test_split_is_the_documented_tail_fraction():
    text = "abcdefghij" * 100
    data = TokenData.from_text(text, CharacterTokenizer.train(text))
    assert len(data.val) == int(len(text) * VAL_FRACTION)
    assert len(data.train) + len(data.val) == len(text)
    assert data.train.dtype == np.uint16
    assert data.val.tolist() == CharacterTokenizer.train(text).encode(text[len(data.train):])


def test_batches_are_windows_shifted_by_one():
    ids = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(ids, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y, x + 1)
    assert x.dtype == torch.long


def test_text_too_short_for_the_context():
    text = "abc" * 30
    data = TokenData.from_text(text, CharacterTokenizer.train(text))
    with pytest.raises(RepytilianError, match="too short for a context of 64"):
        data.check_block_size(64)
    big = TokenData.from_text(text * 500, CharacterTokenizer.train(text))  # split sizes as people read numbers
    with pytest.raises(RepytilianError, match="training split has 40,500 tokens and the validation split 4,500"):
        big.check_block_size(100_000)


def test_data_too_short_for_any_context_asks_for_more_data_only():
    text = "hello world "  # 11 training tokens, 1 for validation: no context fits
    data = TokenData.from_text(text, CharacterTokenizer.train(text))
    for block_size in (64, 1):  # suggesting a smaller context here would send the user round in circles
        with pytest.raises(RepytilianError, match="context of 1 token:|context of 64 tokens:") as e:
            data.check_block_size(block_size)
        assert "smaller context" not in str(e.value) and "more data" in str(e.value)


def test_both_d_and_p_is_an_error():
    with pytest.raises(RepytilianError, match="not both"):
        DataSource.from_args("a.txt", "dir")


# --- the named data set ---------------------------------------------------------------------

SMALL = b"tiny data set\n"


@pytest.fixture
def small_dataset(monkeypatch):
    ds = datasets.NamedDataset("small", "small.txt", "https://example.invalid/small.txt",
                               hashlib.sha256(SMALL).hexdigest(), len(SMALL))
    monkeypatch.setitem(datasets.DATASETS, "small", ds)
    monkeypatch.delenv("REPYTILIAN_OFFLINE", raising=False)
    return ds


def test_mirror_is_used_when_the_cache_is_empty(small_dataset, tmp_path, monkeypatch):
    (tmp_path / "small.txt").write_bytes(SMALL)
    monkeypatch.setenv("REPYTILIAN_DATA", str(tmp_path))
    monkeypatch.setattr(datasets, "download", lambda url: pytest.fail("must not download"))
    assert datasets.dataset_path("small") == tmp_path / "small.txt"


def test_download_is_verified_and_cached(small_dataset, monkeypatch, isolated_home):
    monkeypatch.delenv("REPYTILIAN_DATA", raising=False)
    calls = []
    monkeypatch.setattr(datasets, "download", lambda url: calls.append(url) or SMALL)
    path = datasets.dataset_path("small")
    assert path == isolated_home / "datasets" / "small.txt" and path.read_bytes() == SMALL
    assert datasets.dataset_path("small") == path and len(calls) == 1  # the second time, from the cache


def test_download_with_a_wrong_checksum_is_refused(small_dataset, monkeypatch, isolated_home):
    monkeypatch.delenv("REPYTILIAN_DATA", raising=False)
    monkeypatch.setattr(datasets, "download", lambda url: b"tampered")
    with pytest.raises(RepytilianError, match="does not match the expected sha256"):
        datasets.dataset_path("small")
    assert not (isolated_home / "datasets" / "small.txt").exists()


def test_offline_without_a_copy_says_how_to_provide_it(small_dataset, monkeypatch):
    monkeypatch.delenv("REPYTILIAN_DATA", raising=False)

    def offline(url):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(datasets, "download", offline)
    with pytest.raises(RepytilianError, match="REPYTILIAN_DATA"):
        datasets.dataset_path("small")


def test_corrupt_mirror_copy_is_reported(small_dataset, tmp_path, monkeypatch):
    (tmp_path / "small.txt").write_bytes(b"something else")
    monkeypatch.setenv("REPYTILIAN_DATA", str(tmp_path))
    with pytest.raises(RepytilianError, match="does not match the sha256"):
        datasets.dataset_path("small")


@pytest.mark.skipif(not datasets.os.environ.get("REPYTILIAN_DATA"), reason="needs ../shared/data")
def test_tiny_shakespeare_from_the_mirror():
    text = load_text(DataSource("dataset", "shakespeare"))
    assert len(text) == 1_115_394 and text.startswith("First Citizen:")
