"""repytilian export --format gguf: read back with gguf's own reader, tensor by tensor."""
import json

import numpy as np
import pytest
import torch
from conftest import run_script

from repytilian.errors import RepytilianError
from repytilian.interop.gguf_export import _permute_for_rope, export_gguf
from repytilian.store.folder import load_model_dir

gguf = pytest.importorskip("gguf")


def field(reader, name):
    f = reader.fields[name]
    if len(f.data) == 1:
        part = f.parts[f.data[0]]
        return bytes(part).decode() if f.types[0] == gguf.GGUFValueType.STRING else part.tolist()[0]
    return [bytes(f.parts[i]).decode() for i in f.data]


@pytest.fixture(scope="module")
def bpe_models(tmp_path_factory):
    here = tmp_path_factory.mktemp("gguf")
    (here / "c.txt").write_text("the king and the queen walk to the castle.\n" * 80 + "Café!\n")
    for arch in ("classic", "modern", "qwen3"):  # qwen3: modern with QK-norm
        r = run_script("training.py", "-d", "c.txt", "-z", "bpe", "--vocab-size", "300", "-m", arch,
                       "--arch", "modern" if arch == "qwen3" else arch, *(["--set", "qk_norm=true"] * (arch == "qwen3")),
                       "-i", "quick", "-t", "0", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
                       "--block-size", "16", cwd=here)
        assert r.returncode == 0, r.stderr
    return here


@pytest.mark.parametrize("arch", ["classic", "modern", "qwen3"])
def test_the_gguf_file_holds_the_model_and_its_tokenizer(bpe_models, arch):
    here = bpe_models
    r = run_script("export", "-m", arch, "--format", "gguf", f"{arch}.gguf", cwd=here)
    assert r.returncode == 0, r.stderr
    loaded = load_model_dir(here / arch)
    cfg, sd = loaded.model.config, loaded.model.state_dict()
    reader = gguf.GGUFReader(str(here / f"{arch}.gguf"))
    name = {"modern": "llama", "classic": "gpt2", "qwen3": "qwen3"}[arch]
    assert field(reader, "general.architecture") == name
    assert field(reader, f"{name}.block_count") == cfg.n_layer
    assert field(reader, f"{name}.context_length") == cfg.block_size
    assert field(reader, f"{name}.embedding_length") == cfg.n_embd
    assert field(reader, "tokenizer.ggml.model") == "gpt2"
    tokens = field(reader, "tokenizer.ggml.tokens")
    vocab = json.loads(loaded.tokenizer.hf.to_str())["model"]["vocab"]
    assert len(tokens) == cfg.vocab_size and all(tokens[i] == t for t, i in vocab.items())
    assert len(field(reader, "tokenizer.ggml.merges")) > 0
    # An end-of-text id that no text contains (the byte 0xFF), no start token added: without them
    # llama.cpp took id 11 for both, an ordinary token, and cut generation there.
    assert tokens[field(reader, "tokenizer.ggml.eos_token_id")] == "\u00ff"
    assert field(reader, "tokenizer.ggml.bos_token_id") == field(reader, "tokenizer.ggml.eos_token_id")
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    tensors = {t.name: np.asarray(t.data).reshape([int(d) for d in reversed(t.shape)]) for t in reader.tensors}
    assert np.array_equal(tensors["token_embd.weight"], sd["transformer.wte.weight"].numpy())
    assert np.array_equal(tensors["output.weight"], sd["lm_head.weight"].numpy())
    if arch == "classic":
        assert np.array_equal(tensors["position_embd.weight"], sd["transformer.wpe.weight"].numpy())
        assert np.array_equal(tensors["blk.1.attn_qkv.weight"], sd["transformer.h.1.attn.c_attn.weight"].numpy())
        assert np.array_equal(tensors["blk.0.ffn_down.bias"], sd["transformer.h.0.mlp.c_proj.bias"].numpy())
        assert len(tensors) == 5 + 12 * cfg.n_layer
    elif arch == "modern":
        q = sd["transformer.h.0.attn.c_attn.weight"][: cfg.n_embd]
        assert np.array_equal(tensors["blk.0.attn_q.weight"], _permute_for_rope(q, cfg.n_head).numpy())
        assert not np.array_equal(tensors["blk.0.attn_q.weight"], q.numpy())  # reordered for GGML's rotary layout
        gate = sd["transformer.h.1.mlp.c_fc.weight"][: cfg.mlp_hidden]
        assert np.array_equal(tensors["blk.1.ffn_gate.weight"], gate.numpy())
        assert len(tensors) == 3 + 9 * cfg.n_layer
    else:  # qwen3 rotates each head's halves, as we do: the matrices as they are, and the two norms
        q = sd["transformer.h.0.attn.c_attn.weight"][: cfg.n_embd]
        assert np.array_equal(tensors["blk.0.attn_q.weight"], q.numpy())
        assert np.array_equal(tensors["blk.1.attn_k_norm.weight"], sd["transformer.h.1.attn.k_norm.weight"].numpy())
        assert field(reader, "qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6, rel=1e-3)
        assert len(tensors) == 3 + 11 * cfg.n_layer


def test_what_llama_cpp_cannot_load_is_refused(tmp_path, bpe_models):
    from repytilian.model import GPT, ModelConfig
    from repytilian.store.folder import save_model_dir
    from repytilian.tokenizers.json_tokens import JsonTokenizer

    notes = JsonTokenizer(["60", "62", "64"], end_of_sequence=True)  # tokens that are JSON values, not text
    save_model_dir(tmp_path / "music", GPT(ModelConfig(vocab_size=notes.vocab_size, block_size=8, n_layer=1,
                                                       n_head=1, n_embd=8)), notes, {})
    r = run_script("export", "-m", "music", "--format", "gguf", "x.gguf", cwd=tmp_path)
    assert r.returncode == 2 and "the json tokenizer has no form llama.cpp can load" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
    loaded = load_model_dir(bpe_models / "classic")
    (tmp_path / "taken.gguf").write_text("")
    with pytest.raises(RepytilianError, match="already exists"):
        export_gguf(loaded.model, loaded.tokenizer, tmp_path / "taken.gguf")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_rope_reordering_pairs_each_heads_halves():
    w = torch.arange(8.0).repeat_interleave(2).reshape(8, 2)  # one head, 8 rows: pairs (i, i + 4) to (2i, 2i + 1)
    assert _permute_for_rope(w, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.parametrize("arch", ["modern", "classic", "qwen3"])
def test_llama_cpp_reads_the_file_and_continues_greedily_as_we_do(bpe_models, tmp_path, arch):
    """Runs where llama-cpp-python is installed (it compiles llama.cpp: not part of the dev extra)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from repytilian.sampling import SamplingOptions, sample_ids

    folder = bpe_models / arch
    if arch == "classic":  # llama.cpp's gpt2 computes GELU's tanh form: train one that uses it
        folder = bpe_models / "classic-tanh"
        if not folder.exists():
            r = run_script("training.py", "-d", "c.txt", "-z", "bpe", "--vocab-size", "300", "-m", "classic-tanh",
                           "-i", "quick", "-t", "0", "--n-layer", "2", "--n-head", "2", "--n-embd", "32",
                           "--block-size", "16", "--set", "activation=gelu_tanh", cwd=bpe_models)
            assert r.returncode == 0, r.stderr
    loaded = load_model_dir(folder)
    if arch == "qwen3":  # gains far from 1, so that a file whose query and key norms were lost shows it
        with torch.no_grad():
            for name, p in loaded.model.named_parameters():
                if name.endswith(("q_norm.weight", "k_norm.weight")):
                    p.mul_(torch.linspace(0.2, 3.0, p.numel()))
    path = export_gguf(loaded.model, loaded.tokenizer, tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=16, logits_all=True, verbose=False)
    prompt = "the king and"
    ids = loaded.tokenizer.encode(prompt)
    assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids
    n = loaded.model.config.block_size - len(ids)
    ours = [int(t) for t in sample_ids(loaded.model, ids, n, SamplingOptions(temperature=0))]
    theirs = []
    llm.reset()
    llm.eval(ids)
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids]))[0][0, -1]
    assert np.allclose(llm.scores[len(ids) - 1], logits.numpy(), atol=2e-3)  # the same function, not only its argmax
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        theirs.append(token)
        llm.eval([token])
    assert theirs == ours


def test_the_suggested_llama_cpp_command_stays_within_the_models_context(tmp_path):
    import shlex
    from pathlib import Path

    bpe = Path(__file__).resolve().parent.parent / "models" / "shakespeare" / "bpe"
    r = run_script("export", "-m", str(bpe), "--format", "gguf", "bpe.gguf", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(x.strip() for x in r.stderr.splitlines() if x.strip().startswith("llama-completion "))
    words = shlex.split(line)
    flag = {words[i]: words[i + 1] for i in range(1, len(words) - 1, 2)}
    loaded = load_model_dir(bpe)
    block = loaded.model.config.block_size
    assert flag["-m"] == "bpe.gguf" and int(flag["-c"]) == block
    assert 0 < int(flag["-n"]) and int(flag["-n"]) + len(loaded.tokenizer.encode(flag["-p"])) <= block


def test_llama_cpp_runs_the_shipped_bpe_model_to_its_length_as_we_do(tmp_path):
    """Before the fix llama.cpp ended this at the first comma (its default end id, 11, is `,` here)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from pathlib import Path

    from repytilian.sampling import SamplingOptions, sample_ids

    bpe = Path(__file__).resolve().parent.parent / "models" / "shakespeare" / "bpe"
    loaded = load_model_dir(bpe)
    path = export_gguf(loaded.model, loaded.tokenizer, tmp_path / "bpe.gguf")
    block = loaded.model.config.block_size
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=block, verbose=False)
    assert llm.detokenize([llm.token_eos()]) != b","
    prompt = "ROMEO:"
    ids = loaded.tokenizer.encode(prompt)
    assert llm.tokenize(prompt.encode()) == ids  # nothing added before the prompt
    n = block - len(ids)
    ours = loaded.tokenizer.decode([int(t) for t in sample_ids(loaded.model, ids, n, SamplingOptions(temperature=0))])
    assert "," in ours  # the text goes past commas...
    answer = llm.create_completion(prompt, max_tokens=n, temperature=0.0)["choices"][0]
    assert answer["finish_reason"] == "length" and answer["text"] == ours  # ...in llama.cpp as in ours


def test_a_gguf_name_exports_gguf_and_the_file_may_come_as_o(tmp_path):
    from pathlib import Path

    bpe = Path(__file__).resolve().parent.parent / "models" / "shakespeare" / "bpe"
    by_name = run_script("export", "-m", str(bpe), "named.gguf", cwd=tmp_path)  # was a Hugging Face folder so named
    assert by_name.returncode == 0, by_name.stderr
    as_flag = run_script("export", "-m", str(bpe), "-o", "flag.gguf", cwd=tmp_path)
    assert as_flag.returncode == 0, as_flag.stderr
    for name in ("named.gguf", "flag.gguf"):
        assert (tmp_path / name).is_file() and (tmp_path / name).read_bytes()[:4] == b"GGUF"
    nowhere = run_script("export", "-m", str(bpe), cwd=tmp_path)
    assert nowhere.returncode == 2 and "say where to write" in nowhere.stderr
    two = run_script("export", "-m", str(bpe), "a.gguf", "-o", "b.gguf", cwd=tmp_path)
    assert two.returncode == 2 and "give one" in two.stderr
