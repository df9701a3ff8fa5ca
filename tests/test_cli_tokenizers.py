"""Each tokenizer, end to end from both command lines: train, then generate."""
import json
import random

import pytest
from conftest import TINY, run_script

CHORDS = [[60, 64, 67], [62, 65, 69], [64, 67, 71], [65, 69, 72], [67, 71, 74], "rest"]


def chord_file(tmp_path) -> str:
    rng = random.Random(0)
    piece = lambda: [rng.choice(CHORDS) for _ in range(rng.randint(20, 40))]  # noqa: E731
    doc = {"train": [piece() for _ in range(40)], "valid": [piece() for _ in range(5)]}
    path = tmp_path / "chords.json"
    path.write_text(json.dumps(doc))
    return str(path)


@pytest.mark.parametrize("command", ["training.py", "train"])
@pytest.mark.parametrize("tokenizer", ["characters", "words", "bpe"])
def test_text_tokenizers_train_and_generate(corpus_file, tmp_path, command, tokenizer):
    extra = ["--vocab-size", "300"] if tokenizer == "bpe" else []
    r = run_script(command, "-d", str(corpus_file), "-z", tokenizer, "-m", "m", "-i", "quick", "-t", "10",
                   *extra, *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["tokenizer"] == tokenizer
    g = run_script("generate.py", "-m", "m", "-t", "15", "-c", "the king", cwd=tmp_path)
    assert g.returncode == 0, g.stderr
    assert g.stdout.startswith("the king") and len(g.stdout) > len("the king")


def test_bpe_continues_prompts_with_words_it_never_saw(corpus_file, tmp_path):
    run_script("training.py", "-d", str(corpus_file), "-z", "bpe", "-m", "m", "-i", "quick", "-t", "0", *TINY,
               cwd=tmp_path)
    g = run_script("generate.py", "-m", "m", "-t", "5", "-c", "Zyzzyva ☃", cwd=tmp_path)
    assert g.returncode == 0 and g.stdout.startswith("Zyzzyva ☃")


@pytest.mark.parametrize("command", ["training.py", "train"])
def test_json_chords_in_many_sequences_with_a_validation_part(tmp_path, command):
    data = chord_file(tmp_path)
    r = run_script(command, "-d", data, "-z", "json", "--json-key", "train", "--json-val-key", "valid",
                   "-m", "music", "-i", "quick", "-t", "12", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    sample = json.loads(r.stdout)  # the post-training sample is valid JSON too
    assert isinstance(sample, list) and all(tok in CHORDS for tok in sample)
    config = json.loads((tmp_path / "music" / "config.json").read_text())
    assert config["data"]["val_tokens"] > 0 and config["tokenizer"] == "json"

    out = tmp_path / "song.json"
    g = run_script("generate.py", "-m", "music", "-t", "8", "-c", "[[60, 64, 67], \"rest\"]", "-f", str(out),
                   "-ft", "8", "--seed", "5", cwd=tmp_path)
    assert g.returncode == 0, g.stderr
    shown = json.loads(g.stdout)
    assert shown[:2] == [[60, 64, 67], "rest"] and 2 < len(shown) <= 10  # ends early if the end token is sampled
    assert json.loads(out.read_text()) == shown  # the file gets the same JSON


def test_json_model_resumes_with_its_json_reading_options(tmp_path):
    data = chord_file(tmp_path)
    r = run_script("training.py", "-d", data, "-z", "json", "--json-key", "train", "--json-val-key", "valid",
                   "-m", "music", "-i", "quick", "-t", "0", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    more = run_script("training.py", "-l", "music", "-m", "music", "--iters", "5", "-t", "0", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert json.loads((tmp_path / "music" / "config.json").read_text())["summary"]["step"] == 55


def test_json_unknown_prompt_tokens_are_listed(tmp_path):
    data = chord_file(tmp_path)
    run_script("training.py", "-d", data, "-z", "json", "--json-key", "train", "-m", "music", "-i", "quick",
               "-t", "0", *TINY, cwd=tmp_path)
    r = run_script("generate.py", "-m", "music", "-c", "[[1, 2, 3], \"rest\", 99]", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown tokens [1,2,3], 99" in r.stderr


@pytest.mark.parametrize("content, args, message", [
    ('{"train": [[1, 2]', [], "bad.json: invalid JSON at line 1, column 18"),
    ('{"train": [[1, 2]]}', ["--json-key", "songs"], "has no key 'songs'"),
    ('[[], []]', [], "no tokens to train on"),
])
def test_bad_json_data_from_the_command_line(tmp_path, content, args, message):
    (tmp_path / "bad.json").write_text(content)
    r = run_script("training.py", "-d", "bad.json", "-z", "json", "-m", "x", "-i", "quick", *args, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and message in r.stderr, r.stderr


def test_tokenize_command_compares_tokenizers(corpus_file, tmp_path):
    r = run_script("tokenize", "-d", str(corpus_file), "--vocab-size", "300", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert rows["characters"][1] == "29" and rows["bpe"][1] == "300"
    assert "unavailable" in " ".join(rows["gpt2"])  # no network, no cached encoding: said, not crashed
    assert "or use -z bpe" in " ".join(rows["gpt2"])  # said the library's "`tokenizer` bpe"
    bad = run_script("tokenize", "-d", str(corpus_file), "-z", "bpe", "--vocab-size", "10", cwd=tmp_path)
    assert bad.returncode == 2 and "at least 257" in bad.stderr and bad.stdout == ""  # was the table's header alone
    chords = run_script("tokenize", "-d", chord_file(tmp_path), "-z", "json", "--json-key", "train",
                        cwd=tmp_path)
    assert chords.returncode == 0 and chords.stdout.splitlines()[1].split()[1] == "7"  # 6 chords + end
