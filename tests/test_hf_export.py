"""`repytilian export --format hf`: transformers loads the folder and computes what we compute."""
from __future__ import annotations

import pytest
import torch
from conftest import TINY, make_corpus, run_script

from repytilian.errors import RepytilianError
from repytilian.interop.hf import export_hf
from repytilian.model import GPT, ModelConfig
from repytilian.sampling import SamplingOptions, sample_ids
from repytilian.tokenizers import tokenizer_class

transformers = pytest.importorskip("transformers")  # a dev dependency (pyproject's dev extra)

TEXT = make_corpus(60) + "Café déjà vu, naïve résumé!\n"


def random_model(vocab: int, **overrides) -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, block_size=24, n_layer=2, n_head=2, n_embd=16, **overrides)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # away from the init: biases and gains all matter
    return model


def load_hf(folder):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, transformers.AutoTokenizer.from_pretrained(folder)


def assert_same_logits(hf_model, model, batch: int = 3):
    idx = torch.randint(model.config.vocab_size, (batch, model.config.block_size))
    with torch.no_grad():
        assert torch.allclose(hf_model(idx).logits, model(idx)[0], atol=1e-4)


def greedy_both(model, hf_model, prompt: list[int]) -> tuple[list[int], list[int]]:
    """Greedy continuations from ours and from transformers, within the context (GPT-2 and Llama
    have no window to slide)."""
    n = model.config.block_size - len(prompt)
    ours = [int(t) for t in sample_ids(model, prompt, n, SamplingOptions(temperature=0))]
    with torch.no_grad():
        theirs = hf_model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False,
                                   pad_token_id=0)[0, len(prompt):].tolist()
    return ours, theirs


@pytest.mark.parametrize("name", ["characters", "words", "bpe"])
def test_the_export_loads_in_transformers_with_the_same_logits_tokens_and_greedy_text(tmp_path, name):
    tokenizer = tokenizer_class(name).train(TEXT, **({"vocab_size": 300} if name == "bpe" else {}))
    model = random_model(tokenizer.vocab_size)
    export_hf(model, tokenizer, tmp_path / "hf")
    hf_model, hf_tokenizer = load_hf(tmp_path / "hf")
    assert isinstance(hf_model, transformers.GPT2LMHeadModel)
    assert_same_logits(hf_model, model)

    sample = "the king and queen walk.\nCafé déjà vu!"
    ids = tokenizer.encode(sample)
    assert hf_tokenizer(sample)["input_ids"] == ids
    assert hf_tokenizer.decode(ids) == tokenizer.decode(ids) == sample

    ours, theirs = greedy_both(model, hf_model, tokenizer.encode("the king"))
    assert theirs == ours
    assert hf_tokenizer.decode(theirs) == tokenizer.decode(ours)


@pytest.mark.parametrize("overrides", [dict(bias=False), dict(activation="relu", tie_embeddings=False)])
def test_models_without_biases_or_with_a_relu_and_an_untied_head_export_exactly(tmp_path, overrides):
    tokenizer = tokenizer_class("characters").train(TEXT)
    model = random_model(tokenizer.vocab_size, **overrides)
    export_hf(model, tokenizer, tmp_path / "hf")
    hf_model, _ = load_hf(tmp_path / "hf")
    assert_same_logits(hf_model, model, batch=2)


def test_what_gpt2_cannot_hold_is_refused_before_anything_is_written(tmp_path):
    tokenizer = tokenizer_class("characters").train(TEXT)
    with pytest.raises(RepytilianError, match="has a bias, which GPT-2 has not"):
        export_hf(random_model(tokenizer.vocab_size, tie_embeddings=False, head_bias=True), tokenizer, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(RepytilianError, match="already exists"):
        export_hf(random_model(tokenizer.vocab_size), tokenizer, tmp_path / "b")


def test_export_from_the_command_line(tmp_path, corpus_file):
    trained = run_script("training.py", "-d", str(corpus_file), "-m", "m", "-i", "quick", *TINY, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    result = run_script("export", "-m", "m", "--format", "hf", "hf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "AutoModelForCausalLM.from_pretrained('hf')" in result.stderr
    hf_model, hf_tokenizer = load_hf(tmp_path / "hf")
    out = hf_model.generate(hf_tokenizer("the king", return_tensors="pt")["input_ids"], max_new_tokens=10,
                            do_sample=False, pad_token_id=0)
    assert hf_tokenizer.decode(out[0]).startswith("the king")
    again = run_script("export", "-m", "m", "hf", cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
    # a file's name wrote a Hugging Face folder so named: m.safetensors/config.json, ...
    named = run_script("export", "-m", "m", "out/m.safetensors", cwd=tmp_path)
    assert named.returncode == 2 and "out/m.safetensors names a file, and --format hf writes a folder" in named.stderr
    assert "such as out/m-hf" in named.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, tied, qk_norm", [(name, tied, False) for name in ("characters", "bpe")
                                                  for tied in (False, True)] + [("bpe", True, True)])
def test_the_modern_architecture_exports_as_llama_or_with_qk_norm_as_qwen3_with_the_same_logits_and_greedy_text(
        tmp_path, name, tied, qk_norm):
    from repytilian.config import ARCHS

    tokenizer = tokenizer_class(name).train(TEXT, **({"vocab_size": 300} if name == "bpe" else {}))
    model = random_model(tokenizer.vocab_size, **{**ARCHS["modern"], "tie_embeddings": tied, "qk_norm": qk_norm})
    export_hf(model, tokenizer, tmp_path / "hf")  # random_model moved the norms' gains off 1
    hf_model, hf_tokenizer = load_hf(tmp_path / "hf")
    assert isinstance(hf_model, transformers.Qwen3ForCausalLM if qk_norm else transformers.LlamaForCausalLM)
    assert_same_logits(hf_model, model)
    ours, theirs = greedy_both(model, hf_model, tokenizer.encode("the king"))
    assert theirs == ours


def test_a_mix_of_gpt2_and_llama_options_is_refused(tmp_path):
    tokenizer = tokenizer_class("characters").train(TEXT)
    with pytest.raises(RepytilianError, match="neither GPT-2 nor Llama"):
        export_hf(random_model(tokenizer.vocab_size, position="rope"), tokenizer, tmp_path / "x")


def test_value_embeddings_which_no_exported_architecture_has_are_refused_by_name(tmp_path):
    from repytilian.config import ARCHS

    tokenizer = tokenizer_class("characters").train(TEXT)
    model = random_model(tokenizer.vocab_size, **{**ARCHS["modern"], "value_embeddings": True})
    with pytest.raises(RepytilianError, match="value embeddings") as refused:
        export_hf(model, tokenizer, tmp_path / "x")
    assert refused.value.settings == ("value_embeddings", "format") and not (tmp_path / "x").exists()


def test_arch_modern_trains_generates_and_exports_as_llama_from_the_command_line(tmp_path, corpus_file):
    trained = run_script("training.py", "-d", str(corpus_file), "-m", "m", "-i", "quick", "--arch", "modern", *TINY,
                         cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    from repytilian import load_model

    cfg = load_model(tmp_path / "m").model.config
    assert (cfg.position, cfg.norm, cfg.activation, cfg.bias) == ("rope", "rmsnorm", "swiglu", False)
    more = run_script("training.py", "-l", "m", "-m", "m", "--iters", "5", "--arch", "classic", cwd=tmp_path)
    assert more.returncode == 2 and "cannot change the shape of a trained model" in more.stderr
    generated = run_script("generate.py", "-m", "m", "-t", "20", "--seed", "1", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
    exported = run_script("export", "-m", "m", "hf", cwd=tmp_path)
    assert exported.returncode == 0 and "LlamaForCausalLM" in exported.stderr, exported.stderr
