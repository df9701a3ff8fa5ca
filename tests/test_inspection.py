"""Views inside a model (inspection.py): attention rows are causal distributions made from the
model's own queries and keys, the logit lens ends at the model's output, the embeddings' axes
are the main ones, surprise is the loss in bits."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from repytilian import inspection
from repytilian.config import ARCHS
from repytilian.errors import RepytilianError
from repytilian.model import GPT, ModelConfig
from repytilian.tokenizers import tokenizer_class

TEXT = "the cat sat on the mat. a dog ran to the cat!\n"
SHIPPED = Path(__file__).resolve().parent.parent / "models" / "shakespeare"


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_class("characters").train(TEXT)


def make(tokenizer, **arch) -> GPT:
    torch.manual_seed(0)
    fields = dict(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    return GPT(ModelConfig(**{**fields, **arch})).eval()


ARCHITECTURES = {"classic": ARCHS["classic"], "modern": ARCHS["modern"], "one-head": ARCHS["one-head"],
                 "blocks": ARCHS["blocks"]}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_attention_rows_are_causal_distributions_of_the_models_own_attention(tokenizer, arch):
    model = make(tokenizer, **{**ARCHITECTURES[arch], "dropout": 0.0})
    ids = tokenizer.encode("the cat sat")
    view = inspection.attention(model, tokenizer, ids)
    layers, heads = model.config.n_layer, model.config.n_head
    assert view.weights.shape == (layers, heads, len(ids), len(ids)) and view.tokens[:3] == ["t", "h", "e"]
    assert np.allclose(view.weights.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(view.weights, 1) == 0)  # nothing from the future
    # The same weights give the attention's output the model computes: softmax(...) v == SDPA
    block = model.transformer.h[0]
    x = model.transformer.drop(model.transformer.wte(torch.tensor([ids])) + (
        model.transformer.wpe.weight[: len(ids)] if "wpe" in model.transformer else 0))
    rope = (model.rope_cos[: len(ids)], model.rope_sin[: len(ids)]) if model.config.position == "rope" else None
    q, k, v = block.attn.heads(block.ln_1(x), rope)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)[0]
    assert torch.allclose(torch.tensor(view.weights[0]) @ v[0], expected, atol=1e-5)


def test_the_bigram_step_says_it_has_no_attention(tokenizer):
    model = make(tokenizer, **ARCHS["bigram"])
    with pytest.raises(RepytilianError, match="no attention"):
        inspection.attention(model, tokenizer, tokenizer.encode("the"))


@pytest.mark.parametrize("arch", ["classic", "modern"])
def test_the_logit_lens_reads_every_stage_and_its_last_is_the_models_output(tokenizer, arch):
    model = make(tokenizer, **ARCHITECTURES[arch])
    ids = tokenizer.encode("a dog ran")
    lens = inspection.logit_lens(model, tokenizer, ids, top=3)
    assert lens.stages == ["embeddings", "block 1", "block 2"]
    assert len(lens.top) == 3 and all(len(stage) == len(ids) for stage in lens.top)
    probs = model(torch.tensor([ids]))[0][0].softmax(-1)
    best = probs.topk(3, dim=-1)
    for t in range(len(ids)):
        assert [label for label, _ in lens.top[-1][t]] == [tokenizer.decode([i]) for i in best.indices[t].tolist()]
        assert np.allclose([p for _, p in lens.top[-1][t]], best.values[t].tolist(), atol=1e-6)
        assert all(a >= b for (_, a), (_, b) in zip(lens.top[0][t], lens.top[0][t][1:]))


def test_embeddings_are_projected_on_their_two_main_axes(tokenizer):
    model = make(tokenizer)
    view = inspection.embeddings(model, tokenizer)
    assert view.tokens.shape == (tokenizer.vocab_size, 2) and view.positions.shape == (32, 2)
    assert len(view.labels) == tokenizer.vocab_size and 0 < view.explained[1] <= view.explained[0] <= 1
    wte = model.transformer.wte.weight.detach()
    centred = (wte - wte.mean(0)).numpy()
    # the first axis holds more variance than any other direction: here, than 50 random ones
    first = np.var(view.tokens[:, 0])
    rng = np.random.default_rng(0)
    for _ in range(50):
        d = rng.normal(size=centred.shape[1])
        assert np.var(centred @ (d / np.linalg.norm(d))) <= first + 1e-6
    assert inspection.embeddings(make(tokenizer, **ARCHS["modern"]), tokenizer).positions is None


def test_surprise_is_each_next_tokens_loss_in_bits_and_averages_to_the_models_loss(tokenizer):
    model = make(tokenizer)
    ids = tokenizer.encode("the cat sat on the mat")
    view = inspection.surprise(model, tokenizer, ids)
    assert view.bits.shape == (len(ids) - 1,) and np.all(view.bits >= 0)
    _, loss = model(torch.tensor([ids[:-1]]), torch.tensor([ids[1:]]))
    assert math.isclose(view.mean, loss.item() / math.log(2), rel_tol=1e-5)


def test_two_models_compare_on_one_text_and_differ_where_they_were_trained(tokenizer):
    untrained = make(tokenizer)
    trained = make(tokenizer)
    opt = torch.optim.AdamW(trained.parameters(), lr=3e-2)
    data = torch.tensor([tokenizer.encode(TEXT[:32])])
    for _ in range(60):
        _, loss = trained.train()(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained.eval()
    a, b, difference = inspection.compare((untrained, tokenizer), (trained, tokenizer), TEXT[:32])
    assert np.allclose(difference, b.bits - a.bits) and b.mean < a.mean - 1  # it learned this text


def test_texts_beyond_the_context_and_other_tokenizers_are_refused(tokenizer):
    model = make(tokenizer)
    with pytest.raises(RepytilianError, match="at most 32"):
        inspection.surprise(model, tokenizer, tokenizer.encode(TEXT))
    other = tokenizer_class("characters").train("abc ")
    with pytest.raises(RepytilianError, match="different tokenizers"):
        inspection.compare((model, tokenizer), (make(other), other), "a")


def test_the_shipped_models_can_be_looked_into():
    from repytilian.api import load_model

    lm = load_model(SHIPPED / "v1c")
    ids = lm.tokenizer.encode("ROMEO:\nWhat")
    assert inspection.attention(lm.model, lm.tokenizer, ids).weights.shape[2:] == (len(ids), len(ids))
    lens = inspection.logit_lens(lm.model, lm.tokenizer, ids)
    assert lens.top[-1][-1][0][1] > 0.05  # a trained model: its last block is confident somewhere


def test_the_command_line_prints_each_view_and_draws_it(tmp_path):
    from conftest import run_script

    v1c, v3c = str(SHIPPED / "v1c"), str(SHIPPED / "v3c")
    text = "ROMEO:\nBut soft"
    attention = run_script("inspect", "-m", v1c, "--text", text, "--layer", "2", "--head", "3",
                           "--png", "attention.png", cwd=tmp_path)
    assert attention.returncode == 0, attention.stderr
    lines = attention.stdout.splitlines()
    assert lines[0].startswith("layer 2, head 3") and lines[7].startswith("   7 '\\n'  <- ")  # one line a token
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"
    lens = run_script("inspect", "-m", v1c, "--text", text, "--lens", "--position", "3", "--top", "2", cwd=tmp_path)
    assert lens.returncode == 0 and "after token 3 'M'" in lens.stdout
    assert [line.split()[0] for line in lens.stdout.splitlines()[1:]] == ["embeddings", "block", "block"]  # 2 blocks
    surprise = run_script("inspect", "-m", v1c, "--text", text, "--surprise", "--compare", v3c,
                          "--png", "surprise.png", cwd=tmp_path)
    assert surprise.returncode == 0 and "bits per token on average" in surprise.stdout
    assert len(surprise.stdout.splitlines()) == 1 + len(text) - 1 and (tmp_path / "surprise.png").exists()
    embeddings = run_script("inspect", "-m", v1c, "--embeddings", "--png", "e.png", cwd=tmp_path)
    assert embeddings.returncode == 0 and [line[:6] for line in embeddings.stdout.splitlines()[1:]] == ["axis 1", "axis 2"]


@pytest.mark.parametrize("flags, words", [
    (["--text", "x" * 300], "at most 128"),
    (["--attention"], "--text"),
    (["--text", "ROMEO", "--layer", "9"], "--layer must be from 1 to 6"),
    (["--text", "ROMEO", "--lens", "--position", "9"], "--position must be from 1 to 5"),
    (["--text", "ROMEO", "--surprise", "--compare", str(SHIPPED / "bpe")], "different tokenizers"),
    # a traceback (FileNotFoundError of the temporary file), after the view's work
    (["--text", "ROMEO", "--png", "/proc/attention.png"], "cannot draw to /proc/attention.png: nothing can be written"),
])
def test_bad_requests_are_one_clear_line(tmp_path, flags, words):
    from conftest import run_script

    r = run_script("inspect", "-m", str(SHIPPED / "v3c"), *flags, cwd=tmp_path)
    assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr


def test_a_flag_of_another_view_is_noted_not_ignored_in_silence(tmp_path):
    from conftest import run_script

    r = run_script("inspect", "-m", str(SHIPPED / "v1c"), "--text", "ROMEO", "--position", "2", "--compare", "x",
                   cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("layer 2, head 1"), r.stderr  # the attention view, as asked
    assert "note: --position is for the lens view (--lens); the attention view does not use it" in r.stderr
    assert "note: --compare is for the surprise view (--surprise)" in r.stderr
    r = run_script("inspect", "-m", str(SHIPPED / "v1c"), "--embeddings", "--text", "ROMEO", "--head", "2",
                   cwd=tmp_path)
    assert r.returncode == 0 and "--text is not used" in r.stderr and "--head is for the attention view" in r.stderr
    quiet = run_script("inspect", "-m", str(SHIPPED / "v1c"), "--text", "ROMEO", "--lens", "--top", "2", cwd=tmp_path)
    assert quiet.returncode == 0 and "note" not in quiet.stderr


def test_a_python_caller_may_give_the_text_itself(tokenizer, tmp_path):
    """inspection.attention(model, tokenizer, "text") was "ValueError: too many dimensions 'str'", and
    evaluate_model(lm, "book.txt") "AttributeError: 'str' object has no attribute 'describe'"."""
    from repytilian.evaluate import evaluate_model
    from repytilian.language_model import LanguageModel

    model, ids = make(tokenizer), tokenizer.encode("the cat sat")
    assert np.array_equal(inspection.attention(model, tokenizer, "the cat sat").weights,
                          inspection.attention(model, tokenizer, ids).weights)
    assert np.array_equal(inspection.surprise(model, tokenizer, "the cat sat").bits,
                          inspection.surprise(model, tokenizer, torch.tensor(ids)).bits)
    assert inspection.logit_lens(model, tokenizer, "the cat").tokens == inspection.logit_lens(model, tokenizer, ids[:7]).tokens
    (tmp_path / "book.txt").write_text(TEXT * 3, encoding="utf-8")
    lm = LanguageModel(model, tokenizer)
    assert evaluate_model(lm, str(tmp_path / "book.txt")).tokens == evaluate_model(lm, tmp_path).tokens > 0
