"""Fine-tuning a characters (or words) model on text with tokens it has never seen: its vocabulary
grows (Tiny Shakespeare has no digits but 3, no brackets and no accents, so most people's text had some)."""
import json
from pathlib import Path

import torch
from conftest import TINY, run_script

from repytilian.store.folder import load_model_dir

V1C = Path(__file__).resolve().parent.parent / "models" / "shakespeare" / "v1c"
BOOK = "Café au lait costs 4.50 [about] {this}, 100% of the time.\n" * 40


def test_a_shipped_model_fine_tunes_on_text_with_new_characters(tmp_path):
    (tmp_path / "book.txt").write_text(BOOK, encoding="utf-8")
    r = run_script("training.py", "-l", str(V1C), "-d", "book.txt", "-m", "tuned", "--iters", "10",
                   "--batch-size", "4", "-t", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # was: the training data does not fit the vocabulary of .../v1c
    before, after = load_model_dir(V1C), load_model_dir(tmp_path / "tuned")
    old, new = before.tokenizer.itos, sorted(set(BOOK) - set(before.tokenizer.itos))
    assert "0" in new and "é" in new and f"added the text's {len(new)} new characters" in r.stderr
    assert "the text is small" in r.stderr and "-s tiny" not in r.stderr  # its shape is v1c's: no smaller one
    assert after.tokenizer.itos == old + new  # the old ids keep their characters
    assert after.model.config.vocab_size == len(old) + len(new)
    assert after.tokenizer.decode(after.tokenizer.encode("Café 4.50 [x]")) == "Café 4.50 [x]"
    g = run_script("generate.py", "-m", "tuned", "-c", "Café {", "-t", "10", cwd=tmp_path)
    assert g.returncode == 0 and g.stdout.startswith("Café {"), g.stderr


def test_a_model_with_optimiser_state_starts_a_new_run_when_its_vocabulary_grows(tmp_path, corpus_file):
    r = run_script("training.py", "-d", str(corpus_file), "-m", "own", "--iters", "3", "-t", "0", *TINY, cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "own" / "trainer_state").is_dir(), r.stderr
    (tmp_path / "more.txt").write_text("The King, in 1600: «what light?»\n" * 100, encoding="utf-8")
    grown = run_script("training.py", "-l", "own", "-d", "more.txt", "-m", "more", "--iters", "3", "-t", "0",
                       cwd=tmp_path)
    assert grown.returncode == 0, grown.stderr  # its saved optimiser state fits the old vocabulary only
    assert "fine-tuning own: its vocabulary grew by the text's new tokens" in grown.stderr
    tuned = load_model_dir(tmp_path / "more")
    assert {"T", "K", "1", "«"} <= set(tuned.tokenizer.itos)
    assert tuned.model.lm_head.weight.shape[0] == tuned.tokenizer.vocab_size
    # the same text again: nothing new, so its own run continues exactly (with its optimiser state)
    again = run_script("training.py", "-l", "more", "-d", "more.txt", "-m", "more", "--iters", "2", "-t", "0",
                       cwd=tmp_path)
    assert again.returncode == 0 and "new characters" not in again.stderr and "fine-tuning" not in again.stderr


def test_new_rows_start_as_the_average_of_the_old_ones(tmp_path):
    loaded = load_model_dir(V1C)
    table = loaded.model.transformer.wte.weight.detach().clone()
    loaded.model.grow_vocabulary(table.shape[0] + 3)
    grown = loaded.model.transformer.wte.weight.detach()
    assert torch.equal(grown[: table.shape[0]], table)
    assert torch.allclose(grown[table.shape[0]:], table.mean(0).expand(3, -1))


def test_a_words_model_takes_new_words_too(tmp_path):
    words = V1C.parent / "words"
    (tmp_path / "new.txt").write_text("Zyzzyva, the blorptastic king!\n" * 100, encoding="utf-8")
    r = run_script("training.py", "-l", str(words), "-d", "new.txt", "-m", "x", "--iters", "2", "-t", "0",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # was: unknown words 'Zyzzyva', 'blorptastic'
    assert "added the text's 2 new words ('Zyzzyva', 'blorptastic')" in r.stderr
    tuned = load_model_dir(tmp_path / "x")
    assert tuned.tokenizer.itos[-2:] == ["Zyzzyva", "blorptastic"]
    assert tuned.tokenizer.encode("the king") == load_model_dir(words).tokenizer.encode("the king")


def test_a_model_of_the_original_repytilians_words_takes_new_words_too(tmp_path, corpus_file):
    r = run_script("training.py", "-d", str(corpus_file), "-z", "spaced_words", "-m", "old", "--iters", "2", "-t", "0",
                   *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (tmp_path / "new.txt").write_text("the king, Zyzzyva!\n" * 400, encoding="utf-8")
    grown = run_script("training.py", "-l", "old", "-d", "new.txt", "-m", "new", "--iters", "2", "-t", "0",
                       cwd=tmp_path)
    assert grown.returncode == 0, grown.stderr
    assert {"king,", "Zyzzyva!"} <= set(load_model_dir(tmp_path / "new").tokenizer.itos)  # words between spaces


def test_a_json_model_still_refuses_values_it_does_not_know(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([[1, 2, 3, 4] * 50] * 4))
    (tmp_path / "b.json").write_text(json.dumps([[7, 8, 9] * 50] * 4))
    r = run_script("training.py", "-d", "a.json", "-z", "json", "-m", "m", "--iters", "2", "-t", "0", *TINY,
                   "--block-size", "8", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    again = run_script("training.py", "-l", "m", "-d", "b.json", "-m", "m2", "--iters", "2", cwd=tmp_path)
    assert again.returncode == 2 and "does not fit the vocabulary" in again.stderr, again.stderr


def test_a_fine_tune_of_a_fine_tune_takes_the_same_share_of_the_first_peak(tmp_path):
    (tmp_path / "book.txt").write_text(BOOK, encoding="utf-8")
    (tmp_path / "more.txt").write_text("Zürich, 1789: «liberté»!\n" * 40, encoding="utf-8")
    for load, text, out in ((str(V1C), "book.txt", "first"), ("first", "more.txt", "second")):
        r = run_script("training.py", "-l", load, "-d", text, "-m", out, "--iters", "3", "--batch-size", "4", "-t", "0",
                       cwd=tmp_path)
        assert r.returncode == 0, r.stderr

    def peak(folder) -> float:
        return json.loads((Path(folder) / "config.json").read_text())["train"]["learning_rate"]

    assert peak(tmp_path / "first") == peak(tmp_path / "second") == peak(V1C) / 10  # was: a hundredth the second time


def test_a_fine_tune_on_other_text_goes_over_it_a_few_times_not_the_first_runs_steps(tmp_path):
    text = BOOK * 15
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    r = run_script("training.py", "-l", str(V1C), "-d", "book.txt", "-m", "", "-t", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    first = json.loads((V1C / "config.json").read_text())
    per_step = first["train"]["batch_size"] * first["model"]["block_size"]
    steps = -(-4 * (len(text) - len(text) // 10) // per_step)  # four passes over the training split
    assert 100 < steps < first["train"]["max_iters"]  # was: the first run's 2,000 steps, 190 passes
    assert f"a fine-tune on other text takes {steps:,} steps" in r.stderr and f"finished {steps:,} steps" in r.stderr


def test_lora_learns_the_rows_of_new_characters(tmp_path):
    (tmp_path / "book.txt").write_text(BOOK, encoding="utf-8")
    r = run_script("training.py", "-l", str(V1C), "-d", "book.txt", "-m", "lora", "--lora", "2", "--iters", "10",
                   "--batch-size", "4", "-t", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    base = load_model_dir(V1C).model.transformer.wte.weight.detach()
    tuned = load_model_dir(tmp_path / "lora").model.transformer.wte.weight.detach()
    new_rows = tuned[len(base):]
    assert not torch.allclose(new_rows, base.mean(0).expand_as(new_rows))  # was: frozen at their start, unlearnable


def test_lora_with_an_untied_head_trains_its_rows_for_new_tokens():
    from repytilian.config import ModelConfig
    from repytilian.lora import add_lora
    from repytilian.model import GPT

    model = GPT(ModelConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=8, tie_embeddings=False))
    add_lora(model, 2, embeddings=True)
    assert model.lm_head.weight.requires_grad and model.transformer.wte.weight.requires_grad


def test_a_large_corpus_streamed_through_the_token_cache_grows_the_vocabulary_too(tmp_path, monkeypatch):
    monkeypatch.setenv("REPYTILIAN_STREAM_MB", "0.001")  # this text counts as large: read in pieces, cached ids
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "a.txt").write_text(BOOK, encoding="utf-8")
    (tmp_path / "books" / "b.txt").write_text("Straße № 7\n" * 200, encoding="utf-8")
    r = run_script("training.py", "-l", str(V1C), "-p", "books", "-m", "big", "--iters", "3", "-t", "0",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tokenizer = load_model_dir(tmp_path / "big").tokenizer
    assert {"ß", "№", "7", "é", "["} <= set(tokenizer.itos[65:]) and "MB of text into" in r.stderr  # the cache


def test_a_first_chat_fine_tune_takes_the_conversations_new_characters(tmp_path):
    from repytilian import load_model

    talks = [{"messages": [{"role": "user", "content": f"what is {i} + 1?"},
                           {"role": "assistant", "content": f"It is {i + 1} (I think)."}]} for i in range(12)]
    (tmp_path / "talks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in talks), encoding="utf-8")
    r = run_script("training.py", "-l", str(V1C), "--chat", "talks.jsonl", "-m", "rep", "--iters", "4", "-t", "0",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # was: talks.jsonl line 1: unknown characters '+', '0', '1', '?'...
    assert "new characters" in r.stderr and "added the chat format's 4 special tokens" in r.stderr
    lm = load_model(tmp_path / "rep")
    assert lm.tokenizer.decode(lm.tokenizer.encode("what is 7 + 1? (0)")) == "what is 7 + 1? (0)"
    assert isinstance(lm.chat([("user", "what is 7 + 1?")], 5, temperature=0), str)
