"""repytilian import --from hf: a GPT-2 built by transformers itself (tiny, random, on disk; nothing
is downloaded) becomes a model folder with the same logits, fine-tunes with -l and generates; our
own exports (GPT-2 and Llama) import back with identical logits."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_corpus, run_script
from safetensors.torch import load_file

from repytilian.errors import RepytilianError
from repytilian.interop.hf import export_hf
from repytilian.interop.hf_import import import_hf
from repytilian.store.folder import load_model_dir

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEXT = make_corpus(120) + "Café déjà vu!\n"


def byte_level_bpe(vocab_size: int = 300):
    tk = tokenizers.Tokenizer(tokenizers.models.BPE())
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator([TEXT], trainer=trainer)
    return tk


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    """A GPT-2 as transformers makes and saves it (gelu_new, Conv1D weights, safetensors)."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    tk = byte_level_bpe()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk).save_pretrained(folder)
    config = transformers.GPT2Config(vocab_size=tk.get_vocab_size(), n_positions=48, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from the init, so every weight matters
    model.save_pretrained(folder)
    return folder, model, tk


def test_a_transformers_gpt2_imports_with_the_same_logits_and_tokens(hf_gpt2, tmp_path):
    folder, hf_model, tk = hf_gpt2
    r = run_script("import", "--from", "hf", str(folder), "mine", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fine-tune it on your text with: python3 training.py -l mine" in r.stderr
    loaded = load_model_dir(tmp_path / "mine")
    assert loaded.model.config.activation == "gelu_tanh" and loaded.model.config.block_size == 48
    text = "the king and queen walk to the castle. Café!"
    ids = loaded.tokenizer.encode(text)
    assert ids == tk.encode(text).ids and loaded.tokenizer.decode(ids) == text
    idx = torch.randint(tk.get_vocab_size(), (2, 48))
    with torch.no_grad():
        assert torch.allclose(hf_model(idx).logits, loaded.model(idx)[0], atol=1e-4)
    meta = json.loads((tmp_path / "mine" / "config.json").read_text())
    assert meta["imported_from"]["format"] == "huggingface" and meta["tokenizer"] == "bpe"


def test_the_imported_model_fine_tunes_and_generates(hf_gpt2, tmp_path, corpus_file):
    folder, _, _ = hf_gpt2
    assert run_script("import", "--from", "hf", str(folder), "pre", cwd=tmp_path).returncode == 0
    r = run_script("training.py", "-l", "pre", "-d", str(corpus_file), "-m", "tuned", "--iters", "6",
                   "--batch-size", "4", "--eval-interval", "3", "-t", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fine-tuning pre: it was saved without optimiser state" in r.stderr
    before, after = load_file(tmp_path / "pre" / "model.safetensors"), load_file(tmp_path / "tuned" / "model.safetensors")
    assert not torch.equal(before["transformer.h.0.attn.c_attn.weight"], after["transformer.h.0.attn.c_attn.weight"])
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["summary"]["step"] == 6
    g = run_script("generate.py", "-m", "tuned", "-c", "the king", "-t", "8", cwd=tmp_path)
    assert g.returncode == 0 and g.stdout.startswith("the king")
    # ...and the fine-tuned folder, which has its optimiser state, resumes exactly as any other
    again = run_script("training.py", "-l", "tuned", "-d", str(corpus_file), "-m", "tuned2", "--iters", "2",
                       "-t", "0", cwd=tmp_path)
    assert again.returncode == 0 and "resuming at step 6" in again.stderr


@pytest.mark.parametrize("arch", ["classic", "modern", "modern qk_norm"])  # GPT-2, Llama, Qwen3
def test_our_own_exports_import_back_identically(tmp_path, corpus_file, arch):
    arch, *norm = arch.split()
    r = run_script("training.py", "-d", str(corpus_file), "-z", "bpe", "--vocab-size", "280", "--arch", arch,
                   "-m", "m", "-i", "quick", "-t", "0", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
                   "--block-size", "32", *(["--set", "qk_norm=true"] if norm else []), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    original = load_model_dir(tmp_path / "m")
    export_hf(original.model, original.tokenizer, tmp_path / "hf")
    model, tokenizer, _ = import_hf(tmp_path / "hf")
    assert model.config.qk_norm == bool(norm)
    idx = torch.randint(original.model.config.vocab_size, (2, 32))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], original.model(idx)[0], atol=1e-6)
    assert tokenizer.encode("the fool laughs") == original.tokenizer.encode("the fool laughs")


def test_gpt2s_own_vocab_and_merges_files_are_read(hf_gpt2, tmp_path):
    folder, _, tk = hf_gpt2
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("config.json", "model.safetensors"):
        (plain / name).write_bytes((folder / name).read_bytes())
    tk.model.save(str(plain))  # vocab.json and merges.txt, as the original GPT-2 release has them
    model, tokenizer, _ = import_hf(plain)
    assert tokenizer.encode("my lady speaks") == tk.encode("my lady speaks").ids


def test_a_model_in_the_hugging_face_cache_imports_by_its_name(hf_gpt2, tmp_path, monkeypatch):
    """`repytilian import gpt2 OUT` was "the following arguments are required: --from", then "gpt2 is
    not a folder", though huggingface_hub keeps it under a hashed path no one types."""
    folder, _, _ = hf_gpt2
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-gpt2"
    shutil.copytree(folder, repo / "snapshots" / "0123abcd")
    shutil.copytree(folder, repo / "snapshots" / "old")  # a snapshot refs/main does not name
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    r = run_script("import", "someone/tiny-gpt2", "mine", cwd=tmp_path)  # --from: a folder or a name is hf
    assert r.returncode == 0, r.stderr
    assert f"reading the Hugging Face model someone/tiny-gpt2 from its cache: {repo / 'snapshots' / '0123abcd'}" in r.stderr
    assert json.loads((tmp_path / "mine" / "config.json").read_text())["imported_from"]["folder"].endswith("0123abcd")
    absent = run_script("import", "gpt2", "other", cwd=tmp_path)
    assert absent.returncode == 2 and f"nor the Hugging Face model gpt2 in {cache}" in absent.stderr
    assert "snapshot_download('gpt2')" in absent.stderr
    ours = run_script("import", "mine", "again", cwd=tmp_path)  # what the import made: nothing to import
    assert ours.returncode == 2 and "mine is a Repytilian model folder already" in ours.stderr


def test_what_cannot_be_imported_is_refused_clearly(hf_gpt2, tmp_path):
    folder, _, _ = hf_gpt2
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_bytes((folder / "config.json").read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(RepytilianError, match="a pickle, which Repytilian never loads"):
        import_hf(pickled)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(RepytilianError, match="imports GPT-2-family models"):
        import_hf(odd)
    r = run_script("import", "--from", "hf", str(tmp_path / "nowhere"), "x", cwd=tmp_path)
    assert r.returncode == 2 and "is not a folder" in r.stderr
    r = run_script("import", "--from", "nanogpt", "ckpt.pt", "x", cwd=tmp_path)
    assert r.returncode == 2 and "--data is required with the nanogpt format" in r.stderr


def test_an_imported_gpt2_fine_tunes_to_chat_with_lora_and_exports_its_template(hf_gpt2, tmp_path):
    """Issue 28: the base a CPU user fine-tunes to chat is most often an imported GPT-2."""
    folder, _, tk = hf_gpt2
    assert run_script("import", "--from", "hf", str(folder), "pre", cwd=tmp_path).returncode == 0
    turn = {"messages": [{"role": "user", "content": "who are you?"}, {"role": "assistant", "content": "Café!"}]}
    (tmp_path / "c.jsonl").write_text((json.dumps(turn) + "\n") * 6)
    r = run_script("training.py", "-l", "pre", "--chat", "c.jsonl", "--lora", "2", "-m", "chatty", "--iters", "4",
                   "--batch-size", "2", "-t", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"added the chat format's 4 special tokens (ids {tk.get_vocab_size()}-{tk.get_vocab_size() + 3})" in r.stderr
    out = run_script("export", "-m", "chatty", "--format", "hf", "hf-chat", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf-chat")
    from repytilian import load_model

    lm = load_model(tmp_path / "chatty")
    messages = turn["messages"][:1]
    expected = lm.chat_prompt(messages)[0]
    assert hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"] == expected
    assert expected[0] == tk.get_vocab_size() + 1 and expected[-1] == tk.get_vocab_size() + 2  # <|user|> ... <|assistant|>


def test_a_model_with_a_padded_vocabulary_imports_and_never_samples_the_padding(tmp_path):
    """Issue 29, item 5: published models round their embedding matrix up beyond the tokenizer."""
    tk = byte_level_bpe()
    folder = tmp_path / "padded"
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk).save_pretrained(folder)
    padded = -(-tk.get_vocab_size() // 64) * 64 + 64  # rounded up, and a block more
    config = transformers.GPT2Config(vocab_size=padded, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(config).eval()
    hf_model.save_pretrained(folder)
    r = run_script("import", "--from", "hf", str(folder), "mine", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from repytilian import load_model

    lm = load_model(tmp_path / "mine")
    pads = list(range(tk.get_vocab_size(), padded))
    assert lm.model.config.vocab_size == lm.tokenizer.vocab_size == padded
    x = torch.randint(tk.get_vocab_size(), (2, 32))
    with torch.no_grad():
        assert torch.allclose(lm.model(x)[0], hf_model(x).logits, atol=1e-4)  # the padded rows kept
        # Make every padding row the likeliest token: generation must still never choose one
        lm.model.lm_head.weight.zero_()
        lm.model.lm_head.weight[pads] = 1.0
        lm.model.transformer.ln_f.bias.fill_(1.0)
        assert int(lm.model(x)[0][0, -1].argmax()) in pads
    events = list(lm.events("the king", 12, temperature=0))
    ids = [e.id for e in events if hasattr(e, "id")]
    assert len(ids) == 12 and not set(ids) & set(pads)
    sampled = [e.id for e in lm.events("the king", 12, temperature=1.0, seed=3) if hasattr(e, "id")]
    assert not set(sampled) & set(pads)
    assert lm.tokenizer.decode(pads) == "" and lm.tokenizer.encode("<|padding 0|>") != [pads[0]]
