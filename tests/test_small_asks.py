"""Small asks of users of nanoGPT and its peers (issue 18, item 6): --prompt-file, repytilian info."""
import shutil
from pathlib import Path

from conftest import run_script

ROOT = Path(__file__).resolve().parent.parent
V2C = ROOT / "models" / "shakespeare" / "v2c"


def test_a_prompt_can_come_from_a_file(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ROMEO:\nWhat light through yonder window breaks?\n", encoding="utf-8")
    r = run_script("generate.py", "-m", str(V2C), "--prompt-file", str(prompt), "-t", "30", "--seed", "1",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(prompt.read_text())
    same = run_script("generate.py", "-m", str(V2C), "-c", prompt.read_text(), "-t", "30", "--seed", "1",
                      cwd=tmp_path)
    assert same.stdout == r.stdout  # the same as typing it
    both = run_script("generate.py", "-m", str(V2C), "-c", "x", "--prompt-file", str(prompt), cwd=tmp_path)
    assert both.returncode == 2 and "not both" in both.stderr
    missing = run_script("generate.py", "-m", str(V2C), "--prompt-file", str(tmp_path / "nope.txt"), cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    binary = run_script("generate.py", "-m", str(V2C), "--prompt-file", str(tmp_path / "bin.txt"), cwd=tmp_path)
    assert binary.returncode == 2 and "not UTF-8" in binary.stderr


def test_repytilian_info_prints_the_model_card(tmp_path):
    r = run_script("info", str(V2C), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (V2C / "README.md").read_text()
    nothing = run_script("info", str(tmp_path / "no-model"), cwd=tmp_path)
    assert nothing.returncode == 2 and "Traceback" not in nothing.stderr


def test_info_and_plot_take_the_folder_as_m_too(tmp_path):
    r = run_script("info", "-m", str(V2C), cwd=tmp_path)  # every other command takes -m: this was a usage error
    assert r.returncode == 0, r.stderr
    assert r.stdout == (V2C / "README.md").read_text()
    two = run_script("info", str(V2C), "-m", str(tmp_path), cwd=tmp_path)
    assert two.returncode == 2 and "give one" in two.stderr
    folder = tmp_path / "copy"
    shutil.copytree(V2C, folder)
    drawn = run_script("plot", "-m", str(folder), cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr


def test_every_command_on_one_model_takes_it_after_the_command_too(tmp_path):
    """`repytilian eval MODEL`, `chat MODEL`, `inspect MODEL` were "repytilian: error: unrecognized
    arguments: MODEL" under the root's usage, which shows none of the command's flags; info and plot
    took the folder so already."""
    (tmp_path / "verse.txt").write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 3)
    scored = run_script("eval", str(V2C), "-d", "verse.txt", cwd=tmp_path)
    assert scored.returncode == 0 and "bits per character" in scored.stdout, scored.stderr
    looked = run_script("inspect", str(V2C), "--text", "ROMEO", "--top", "2", cwd=tmp_path)
    assert looked.returncode == 0 and "'R'" in looked.stdout, looked.stderr
    two = run_script("inspect", str(V2C), "-m", str(tmp_path), cwd=tmp_path)
    assert two.returncode == 2 and "two model folders given" in two.stderr
    extra = run_script("eval", str(V2C), "more", cwd=tmp_path)
    assert extra.returncode == 2 and "usage: repytilian eval" in extra.stderr
    assert "repytilian eval: error: unrecognized arguments: more" in extra.stderr
    # export's word is where to write: a model there was "already exists; export into a new folder"
    wrong = run_script("export", str(V2C), cwd=tmp_path)
    assert wrong.returncode == 2 and f"the word after export is where to write. Give the model as -m: repytilian " \
                                     f"export -m {V2C} v2c.gguf" in wrong.stderr


def test_top_k_0_means_every_token(tmp_path):
    from repytilian import load_model

    lm = load_model(V2C)
    off = lm.generate("ROMEO:", 40, seed=3, top_k=0)
    assert off == lm.generate("ROMEO:", 40, seed=3, top_k=None)  # 0 is "off", as in transformers
    assert off != lm.generate("ROMEO:", 40, seed=3, top_k=2)
    r = run_script("generate.py", "-m", str(V2C), "--top-k", "0", "-t", "40", "--seed", "3", "-c", "ROMEO:",
                   cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "ROMEO:" + off + "\n"


def test_num_samples_into_a_folder_writes_one_file_each(tmp_path):
    r = run_script("generate.py", "-m", str(V2C), "--num-samples", "3", "-f", "out/", "-t", "20", "--seed", "2",
                   "-c", "KING:", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "out").iterdir())
    assert [f.name for f in files] == ["sample_1.txt", "sample_2.txt", "sample_3.txt"]
    texts = [f.read_text(encoding="utf-8") for f in files]
    assert all(t.startswith("KING:") and len(t) == len("KING:") + 20 for t in texts) and len(set(texts)) == 3
    assert r.stdout == "\n\n---\n\n".join(texts) + "\n"  # the screen shows the same samples
    assert "wrote 3 samples of up to 20 tokens to out/" in r.stderr
    (tmp_path / "taken").write_text("a file")
    bad = run_script("generate.py", "-m", str(V2C), "-f", "taken/x/", "-t", "5", cwd=tmp_path)
    assert bad.returncode == 2 and "cannot write the samples to taken/x: taken is a file, not a folder" in bad.stderr


def test_words_for_text_without_spaces(tmp_path):
    from repytilian.tokenizers.words import WordTokenizer, split_words

    text = "我爱北京天安门。東京は日本の首都です。Hello, wörld ภาษาไทย 한국어 문장\n" * 30
    assert split_words("北京天安门。Hello 한국어")[:7] == ["北", "京", "天", "安", "门", "。", "Hello"]
    assert "한국어" in split_words(text)  # Korean is written with spaces: its words stay words
    tok = WordTokenizer.train(text)
    assert tok.decode(tok.encode(text)) == text and tok.vocab_size < 60
    (tmp_path / "zh.txt").write_text(text, encoding="utf-8")
    r = run_script("training.py", "-d", "zh.txt", "-z", "words", "-m", "zh", "-i", "quick", "-t", "0",
                   "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    g = run_script("generate.py", "-m", "zh", "-c", "北京", "-t", "10", cwd=tmp_path)
    assert g.returncode == 0 and g.stdout.startswith("北京")
    tokenizers = __import__("pytest").importorskip("tokenizers")
    from repytilian.interop.hf import hf_tokenizer_json

    hf = tokenizers.Tokenizer.from_str(hf_tokenizer_json(tok))  # the export splits as we do
    assert hf.encode(text[:80]).ids == tok.encode(text[:80])
