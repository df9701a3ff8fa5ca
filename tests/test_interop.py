"""Bringing models in from elsewhere: the original Repytilian's pickled folders."""
from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch
import torch.nn as nn
from conftest import run_script
from torch.nn import functional as F

from repytilian import load_model
from repytilian.errors import RepytilianError
from repytilian.interop.legacy import convert

# --- a model laid out and saved the way the original Repytilian did (src/llm_bigram.py) -----------

legacy_module = types.ModuleType("src.llm_bigram")


class Head(nn.Module):
    def __init__(self, C, hs, block):
        super().__init__()
        self.key, self.query, self.value = (nn.Linear(C, hs, bias=False) for _ in range(3))
        self.register_buffer("tril", torch.tril(torch.ones(block, block)))
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        T = x.shape[1]
        k, q, v = self.key(x), self.query(x), self.value(x)
        w = (q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5).masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        return F.softmax(w, dim=-1) @ v


class MultiHeadAttention(nn.Module):
    def __init__(self, C, n_head, block):
        super().__init__()
        self.heads = nn.ModuleList([Head(C, C // n_head, block) for _ in range(n_head)])
        self.proj = nn.Linear(C, C)
        self.dropout = nn.Dropout(0.0)

    def forward(self, x):
        return self.proj(torch.cat([h(x) for h in self.heads], dim=-1))


class FeedForward(nn.Module):
    def __init__(self, C):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(C, 4 * C), nn.ReLU(), nn.Linear(4 * C, C), nn.Dropout(0.0))

    def forward(self, x):
        return self.net(x)


class Block(nn.Module):
    def __init__(self, C, n_head, block):
        super().__init__()
        self.sa, self.ffwd = MultiHeadAttention(C, n_head, block), FeedForward(C)
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


for cls in (Head, MultiHeadAttention, FeedForward, Block):
    cls.__module__ = "src.llm_bigram"
    setattr(legacy_module, cls.__name__, cls)


class LegacyModel(nn.Module):
    def __init__(self, vocab, C=16, n_head=4, n_layer=2, block=8):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab, C)
        self.position_embedding_table = nn.Embedding(block, C)
        self.blocks = nn.Sequential(*[Block(C, n_head, block) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, vocab)

    def forward(self, idx):
        x = self.token_embedding_table(idx) + self.position_embedding_table(torch.arange(idx.shape[1]))
        return self.lm_head(self.ln_f(self.blocks(x)))

    def export(self, folder, tokens, with_json=True):
        folder.mkdir(parents=True)
        for name in ("token_embedding_table", "position_embedding_table", "lm_head", "blocks", "ln_f"):
            torch.save(getattr(self, name), folder / f"{name}.pt")
        (folder / "tokens.type").write_text("characters")
        if with_json:
            (folder / "tokens.json").write_text(json.dumps(tokens))
        (folder / "stats.json").write_text(json.dumps({"n_layer": 2, "n_head": 4, "n_embed": 16, "n_dropout": 0.2,
                                                       "learning_rate": 1e-3, "block_size": 8, "batch_size": 64}))


@pytest.fixture
def legacy_folder(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "src", types.ModuleType("src"))
    monkeypatch.setitem(sys.modules, "src.llm_bigram", legacy_module)
    torch.manual_seed(0)
    tokens = sorted(set("\n !,.:;?abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"))
    model = LegacyModel(len(tokens)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # away from the init, so every bias matters
    model.export(tmp_path / "v2c", tokens)
    return tmp_path / "v2c", model, tokens


def test_a_legacy_folder_converts_to_the_same_function(legacy_folder):
    folder, legacy, tokens = legacy_folder
    model, tokenizer, meta = convert(folder)
    assert tokenizer.decode(range(len(tokens))) == "".join(tokens)
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size) == (2, 4, 16, 8)
    assert (cfg.activation, cfg.tie_embeddings, cfg.head_bias) == ("relu", False, True)
    idx = torch.randint(len(tokens), (3, 8))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], legacy(idx), atol=1e-5)
    assert meta["legacy_settings"]["n_embed"] == 16


def test_import_legacy_from_the_command_line_then_generate(legacy_folder, tmp_path):
    folder, _, _ = legacy_folder
    refused = run_script("generate.py", "-m", str(folder), "-t", "5", cwd=tmp_path)
    assert refused.returncode == 2 and f"repytilian import-legacy {folder}" in refused.stderr
    result = run_script("import-legacy", str(folder), "converted", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "generate with: python3 generate.py -m converted" in result.stderr
    assert len(load_model(tmp_path / "converted").generate("ab", 20, seed=1)) == 22 - 2
    out = run_script("generate.py", "-m", "converted", "-t", "30", "--seed", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr


def test_the_vocabulary_can_come_from_tokens_pickle_read_safely(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setitem(sys.modules, "src", types.ModuleType("src"))
    monkeypatch.setitem(sys.modules, "src.llm_bigram", legacy_module)
    tok_module = types.ModuleType("src.tokenizers.characters")

    class TokenizerCharacters:  # what the original pickled: its tokenizer object
        def __init__(self, tokens):
            self.type, self.tokens, self.encoded_data = "characters", tokens, [0, 1, 2]

    TokenizerCharacters.__module__ = "src.tokenizers.characters"
    TokenizerCharacters.__qualname__ = "TokenizerCharacters"
    tok_module.TokenizerCharacters = TokenizerCharacters
    monkeypatch.setitem(sys.modules, "src.tokenizers", types.ModuleType("src.tokenizers"))
    monkeypatch.setitem(sys.modules, "src.tokenizers.characters", tok_module)
    tokens = list("abcdefgh")
    LegacyModel(len(tokens)).export(tmp_path / "old", tokens, with_json=False)
    (tmp_path / "old" / "tokens.pickle").write_bytes(pickle.dumps(TokenizerCharacters(tokens)))
    _, tokenizer, _ = convert(tmp_path / "old")
    assert tokenizer.decode(range(8)) == "abcdefgh"


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if ever unpickled


@pytest.mark.parametrize("planted", ["blocks.pt", "tokens.pickle"])
def test_a_malicious_legacy_file_is_refused_and_never_run(legacy_folder, planted):
    import pickle

    folder, _, _ = legacy_folder
    marker = folder.parent / "pwned"
    if planted == "tokens.pickle":
        (folder / "tokens.json").unlink()
        (folder / planted).write_bytes(pickle.dumps(Exploit(str(marker))))
    else:
        torch.save({"x": Exploit(str(marker))}, folder / planted)
    with pytest.raises(RepytilianError, match="cannot be read safely") as refused:
        convert(folder)
    assert not marker.exists()
    # In our words, whole: never torch's advice to load it with weights_only=False
    message = str(refused.value)
    assert "weights_only" not in message and "likely succeed" not in message and "(1)" not in message
    if planted == "blocks.pt":
        assert "it asks for builtins.open" in message or "it asks for io.open" in message, message


def test_a_words_model_of_the_original_converts_and_keeps_its_words(tmp_path, monkeypatch):
    # The original's words tokenizer: sorted(set(text.split())), encoded by split(), joined by spaces.
    monkeypatch.setitem(sys.modules, "src", types.ModuleType("src"))
    monkeypatch.setitem(sys.modules, "src.llm_bigram", legacy_module)
    text = "Luke looks at the stars .\nHan laughs , Luke runs .\nthe stars wait for Luke"
    tokens = sorted(set(text.split()))
    torch.manual_seed(1)
    legacy = LegacyModel(len(tokens)).eval()
    legacy.export(tmp_path / "v1w", tokens)
    (tmp_path / "v1w" / "tokens.type").write_text("words")
    model, tokenizer, meta = convert(tmp_path / "v1w")
    assert tokenizer.name == "spaced_words" and meta["legacy_tokenizer"] == "words"
    ids = tokenizer.encode("Luke runs ,\n Han")
    assert ids == [tokens.index(w) for w in ("Luke", "runs", ",", "Han")]
    assert tokenizer.decode(ids) == "Luke runs , Han"
    idx = torch.tensor([ids])
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], legacy(idx), atol=1e-5)
    with pytest.raises(RepytilianError, match="did you mean 'Luke'"):
        tokenizer.encode("luke")


def test_an_unknown_legacy_tokenizer_is_refused_with_the_reason(legacy_folder):
    folder, _, _ = legacy_folder
    (folder / "tokens.type").write_text("tiktoken")
    with pytest.raises(RepytilianError, match="only models of its characters and words tokenizers are converted"):
        convert(folder)


def test_an_incomplete_legacy_folder_says_what_is_missing(legacy_folder):
    folder, _, _ = legacy_folder
    (folder / "lm_head.pt").unlink()
    with pytest.raises(RepytilianError, match="has no lm_head.pt"):
        convert(folder)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_the_plain_pickle_reader_reads_plain_data_of_every_modern_protocol(protocol):
    import pickle

    from repytilian.interop.legacy import read_plain_pickle

    value = {"tokens": ["a", "é", "\n"], "n": [0, -1, 2**40, 2.5, None, True, False], "t": (1, (2, 3)),
             "shared": [[1]] * 2}
    if protocol >= 4:  # older protocols write sets and bytes as calls, which the reader never makes
        value |= {"s": {1, 2}, "b": b"xy"}
    assert read_plain_pickle(pickle.dumps(value, protocol=protocol), [], "test") == value


# --- nanoGPT: a ckpt.pt as nanoGPT's train.py writes it, and its forward pass, written out here --------

def nanogpt_state(vocab, n_layer=2, n_embd=16, block=8, bias=True, seed=0):
    """Random weights under the names (and (out, in) layout) of nanoGPT's model.py."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    C = n_embd
    state = {"transformer.wte.weight": r(vocab, C), "transformer.wpe.weight": r(block, C),
             "transformer.ln_f.weight": 1 + r(C)}
    layers = {"ln_1": (C,), "attn.c_attn": (3 * C, C), "attn.c_proj": (C, C), "ln_2": (C,),
              "mlp.c_fc": (4 * C, C), "mlp.c_proj": (C, 4 * C)}
    for i in range(n_layer):
        for name, shape in layers.items():
            p = f"transformer.h.{i}.{name}"
            state[p + ".weight"] = 1 + r(*shape) if name.startswith("ln") else r(*shape)
            if bias:
                state[p + ".bias"] = r(shape[0])
    if bias:
        state["transformer.ln_f.bias"] = r(C)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def nanogpt_forward(state, idx, n_layer, n_head):
    """nanoGPT's GPT.forward, as plain functions of the state dict."""
    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], state[name + ".weight"], state.get(name + ".bias"), 1e-5)

    def linear(x, name):
        return F.linear(x, state[name + ".weight"], state.get(name + ".bias"))

    B, T = idx.shape
    x = state["transformer.wte.weight"][idx] + state["transformer.wpe.weight"][:T]
    C = x.shape[-1]
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        q, k, v = linear(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=2)
        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(C // n_head)
        att = att.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, p + "attn.c_proj")
        x = x + linear(F.gelu(linear(ln(x, p + "ln_2"), p + "mlp.c_fc")), p + "mlp.c_proj")
    return F.linear(ln(x, "transformer.ln_f"), state["lm_head.weight"])


def write_nanogpt_checkpoint(path, text, bias=True, compiled=False, non_flash=False):
    vocab = len(set(text))
    args = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, bias=bias, vocab_size=vocab, dropout=0.0)
    state = nanogpt_state(vocab, bias=bias)
    saved = dict(state)
    if non_flash:  # nanoGPT on torch < 2 kept the causal mask as a buffer named attn.bias
        saved |= {f"transformer.h.{i}.attn.bias": torch.tril(torch.ones(8, 8)).view(1, 1, 8, 8) for i in range(2)}
    if compiled:
        saved = {"_orig_mod." + k: v for k, v in saved.items()}
    optimizer = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
                 "param_groups": [{"lr": 1e-3, "params": [0]}]}
    torch.save({"model": saved, "optimizer": optimizer, "model_args": args, "iter_num": 250,
                "best_val_loss": torch.tensor(1.9), "config": {"dataset": "shakespeare_char", "batch_size": 12}}, path)
    return state


@pytest.mark.parametrize("variant", [dict(), dict(bias=False), dict(compiled=True, non_flash=True)])
def test_a_nanogpt_checkpoint_imports_to_the_same_function(tmp_path, variant):
    from repytilian.interop.nanogpt import convert as convert_nanogpt

    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    (tmp_path / "input.txt").write_text(text)
    state = write_nanogpt_checkpoint(tmp_path / "ckpt.pt", text, **variant)
    model, tokenizer, info = convert_nanogpt(tmp_path / "ckpt.pt", tmp_path / "input.txt")
    assert tokenizer.encode("First") == [sorted(set(text)).index(c) for c in "First"]
    assert info == {"iter_num": 250, "best_val_loss": pytest.approx(1.9), "dataset": "shakespeare_char"}
    idx = torch.randint(len(set(text)), (3, 8))
    with torch.no_grad():
        assert torch.allclose(model(idx)[0], nanogpt_forward(state, idx, 2, 2), atol=1e-5)


def test_import_from_nanogpt_on_the_command_line_and_its_errors(tmp_path):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
    (tmp_path / "input.txt").write_text(text)
    write_nanogpt_checkpoint(tmp_path / "ckpt.pt", text)
    ok = run_script("import", "--from", "nanogpt", "ckpt.pt", "imported", "--data", "input.txt", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    out = run_script("generate.py", "-m", "imported", "-c", "First", "-t", "20", "--seed", "1", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("First"), out.stderr

    (tmp_path / "other.txt").write_text("abc\n")
    wrong_text = run_script("import", "--from", "nanogpt", "ckpt.pt", "x", "--data", "other.txt", cwd=tmp_path)
    assert wrong_text.returncode == 2 and "4 distinct characters but the model's vocabulary is" in wrong_text.stderr
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": Exploit(str(marker))}, "model_args": {}}, tmp_path / "evil.pt")
    evil = run_script("import", "--from", "nanogpt", "evil.pt", "y", "--data", "input.txt", cwd=tmp_path)
    assert evil.returncode == 2 and "cannot be read safely" in evil.stderr and not marker.exists()
    torch.save({"weights": {}}, tmp_path / "plain.pt")
    plain = run_script("import", "--from", "nanogpt", "plain.pt", "z", "--data", "input.txt", cwd=tmp_path)
    assert plain.returncode == 2 and "is not a nanoGPT checkpoint" in plain.stderr


def run_advice(command: str, cwd):
    """Run a command that an error message suggested, as pasted into a shell in `cwd`."""
    import shlex
    import subprocess

    words = shlex.split(command)
    if words[:2] == ["python3", "training.py"] or words[:2] == ["python3", "generate.py"]:
        return run_script(words[1], *words[2:], cwd=cwd)
    return subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_advice_to_convert_an_original_words_model_works(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "src", types.ModuleType("src"))
    monkeypatch.setitem(sys.modules, "src.llm_bigram", legacy_module)
    text = "Luke looks at the stars . Han laughs , Luke runs . the stars wait for Luke"
    tokens = sorted(set(text.split()))
    LegacyModel(len(tokens)).export(tmp_path / "models" / "starwars" / "v1w", tokens)
    (tmp_path / "models" / "starwars" / "v1w" / "tokens.type").write_text("words")
    refused = run_script("generate.py", "-m", "models/starwars/v1w", "-c", "Luke", cwd=tmp_path)
    assert refused.returncode == 2
    advice = refused.stderr.split("Convert it (safely) with: ")[1].strip()
    done = run_advice(advice, tmp_path)
    assert done.returncode == 0, done.stderr
    converted = advice.split()[-1]
    assert converted == "models/starwars/v1w-converted"
    out = run_script("generate.py", "-m", converted, "-c", "Luke", "-t", "6", "--seed", "1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    assert words[0] == "Luke" and len(words) == 7 and set(words) <= set(tokens)


def test_spaced_words_train_and_generate_from_the_command_line(tmp_path):
    (tmp_path / "t.txt").write_text("Luke runs to the ship . Han waits , and Luke runs .\n" * 40)
    r = run_script("training.py", "-d", "t.txt", "-z", "spaced_words", "-m", "m", "--iters", "10", "-t", "0",
                   "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--set", "eval_iters=1",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    words = set("Luke runs to the ship . Han waits , and".split())
    alone = run_script("generate.py", "-m", "m", "-t", "6", "--seed", "2", cwd=tmp_path)
    assert alone.returncode == 0 and not alone.stdout.startswith(" ")  # no space before the first word
    assert len(alone.stdout.split()) == 6 and set(alone.stdout.split()) <= words
    cont = run_script("generate.py", "-m", "m", "-c", "Han  waits", "-t", "3", "--seed", "2", cwd=tmp_path)
    assert cont.stdout.startswith("Han  waits ") and len(cont.stdout.split()) == 5
