"""`repytilian export -m DIR --format hf OUT`: a folder that Hugging Face `transformers` loads.

The classic architecture is GPT-2's, so it is exported as a GPT-2 model: config.json in
transformers' GPT2Config fields, model.safetensors under GPT-2's weight names with its Conv1D
layout (each matrix stored (in, out), the transpose of nn.Linear's). `--arch modern` (rotary
positions, RMSNorm, SwiGLU, no biases) is Llama's, so it is exported as a Llama model, our fused
matrices split into Llama's q/k/v and gate/up projections; with QK-norm on top (`qk_norm`: each
head's queries and keys RMS-normalised before the rotation) it is Qwen3's, the same layout plus
the two norms' gains. All come with a tokenizer.json built with the
`tokenizers` library that encodes and decodes as ours does, with a tokenizer_config.json, so
both AutoModelForCausalLM.from_pretrained(OUT) and AutoTokenizer.from_pretrained(OUT) work.
Nothing here imports transformers: the files are written from their published formats.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..chat_format import TEMPLATE, TOKENS, ChatFormat
from ..config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K, RMS_EPS, ROPE_THETA
from ..errors import RepytilianError
from ..model import GPT
from ..runtime.fileio import fsync_dir, fsync_tree, shareable
from ..tokenizers import Tokenizer
from ..tokenizers.words import TOKEN_PATTERN

CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # GPT-2 stores these (in, out)
ACTIVATION_NAMES = {"gelu": "gelu", "relu": "relu", "gelu_tanh": "gelu_new"}  # ours -> transformers' ACT2FN names


def gpt2_config(model: GPT) -> dict[str, Any]:
    cfg = model.config
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": 4 * cfg.n_embd,
        "activation_function": ACTIVATION_NAMES[cfg.activation],
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.attention_p,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "torch_dtype": "float32",
    }


def family(model: GPT) -> str:
    """Which of transformers' (and llama.cpp's) architectures the model is: "gpt2", "llama", or
    "qwen3" (Llama's with QK-norm); a mix that none of them has is refused."""
    cfg = model.config
    if cfg.n_layer == 0 or not cfg.residual or not cfg.mlp:
        raise RepytilianError("this model is one of the lecture's steps towards the GPT (`arch` bigram, one-head, "
                              "multi-head, feed-forward), which transformers has no architecture for: train "
                              "`arch` classic or modern to export", ("arch",))
    if cfg.value_embeddings:
        raise RepytilianError("this model adds value embeddings to its attention's values (`value_embeddings`), "
                              "which neither transformers' GPT-2, Llama nor Qwen3 (nor llama.cpp) has, so it "
                              "cannot be exported for them; ONNX carries it (`format` onnx)",
                              ("value_embeddings", "format"))
    modern = (cfg.position == "rope", cfg.norm == "rmsnorm", cfg.activation == "swiglu", not cfg.bias)
    if all(modern) and not cfg.head_bias:
        return "qwen3" if cfg.qk_norm else "llama"
    if cfg.position == "learned" and cfg.norm == "layernorm" and cfg.activation in ACTIVATION_NAMES \
            and not cfg.qk_norm:
        return "gpt2"
    raise RepytilianError(
        "this model mixes architecture options that neither GPT-2 nor Llama has (GPT-2: learned positions, "
        "LayerNorm, GELU or ReLU; Llama: rotary positions, RMSNorm, SwiGLU, no biases, and QK-norm for Qwen3's "
        "form of it), so it cannot be exported for transformers"
    )


HF_CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def llama_config(model: GPT) -> dict[str, Any]:
    """Llama's config.json, or Qwen3's (the same fields and a few of its own) for a model with QK-norm."""
    cfg = model.config
    kind = family(model)
    qwen3 = {"use_sliding_window": False, "sliding_window": None, "max_window_layers": cfg.n_layer}
    return {
        "architectures": [HF_CLASSES[kind]],
        "model_type": kind,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.n_embd // cfg.n_head,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": ROPE_THETA,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "torch_dtype": "float32",
    } | (qwen3 if kind == "qwen3" else {})


def llama_weights(model: GPT) -> dict[str, torch.Tensor]:
    cfg = model.config
    C, H = cfg.n_embd, cfg.mlp_hidden
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"], "model.norm.weight": sd["transformer.ln_f.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = sd[ours + "attn.c_attn.weight"].split(C)
        gate, up = sd[ours + "mlp.c_fc.weight"].split(H)
        out |= {
            theirs + "input_layernorm.weight": sd[ours + "ln_1.weight"],
            theirs + "self_attn.q_proj.weight": q, theirs + "self_attn.k_proj.weight": k,
            theirs + "self_attn.v_proj.weight": v, theirs + "self_attn.o_proj.weight": sd[ours + "attn.c_proj.weight"],
            theirs + "post_attention_layernorm.weight": sd[ours + "ln_2.weight"],
            theirs + "mlp.gate_proj.weight": gate, theirs + "mlp.up_proj.weight": up,
            theirs + "mlp.down_proj.weight": sd[ours + "mlp.c_proj.weight"],
        }
        if cfg.qk_norm:  # Qwen3's: each head's queries and keys normalised, one gain per place in a head
            out |= {theirs + "self_attn.q_norm.weight": sd[ours + "attn.q_norm.weight"],
                    theirs + "self_attn.k_norm.weight": sd[ours + "attn.k_norm.weight"]}
    return {k: v.contiguous() for k, v in out.items()}


def gpt2_weights(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict under GPT-2's names and layout; a model without biases gets zero biases."""
    cfg = model.config
    if cfg.head_bias:
        raise RepytilianError("this model's output head has a bias, which GPT-2 has not: it cannot be exported as GPT-2")
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue  # transformers ties it to transformer.wte.weight itself
        t = tensor.detach().float().cpu()
        if any(f".{layer}.weight" in name for layer in CONV1D):
            t = t.t()
        out[name] = t.contiguous()
    if not cfg.bias:  # GPT-2 always has biases: zeros compute the same function
        C = cfg.n_embd
        widths = {"ln_1": C, "attn.c_attn": 3 * C, "attn.c_proj": C, "ln_2": C, "mlp.c_fc": 4 * C, "mlp.c_proj": C}
        for i in range(cfg.n_layer):
            for layer, width in widths.items():
                out[f"transformer.h.{i}.{layer}.bias"] = torch.zeros(width)
        out["transformer.ln_f.bias"] = torch.zeros(C)
    return out


def hf_tokenizer_json(tokenizer: Tokenizer) -> str:
    """A tokenizer.json for the `tokenizers` library that splits, numbers and joins as ours does."""
    try:
        import tokenizers as tk
    except ImportError:
        raise RepytilianError(
            "exporting needs the 'tokenizers' package: pip install 'repytilian[bpe]' (or pip install tokenizers)"
        ) from None
    if tokenizer.name == "bpe":
        return tokenizer.hf.to_str()  # already a tokenizers-library tokenizer
    if tokenizer.name == "characters":
        pattern = r"[\s\S]"  # every character on its own, newlines included
    elif tokenizer.name == "words":
        pattern = TOKEN_PATTERN.pattern  # the same split as tokenizers/words.py
    else:
        raise RepytilianError(
            f"the {tokenizer.name} tokenizer cannot be exported as a Hugging Face tokenizer; "
            "characters, words and bpe models can"
        )
    vocab = {token: i for i, token in enumerate(tokenizer.itos)}
    hf = tk.Tokenizer(tk.models.WordLevel(vocab=vocab, unk_token=None))
    hf.pre_tokenizer = tk.pre_tokenizers.Split(tk.Regex(pattern), behavior="isolated")
    hf.decoder = tk.decoders.Fuse()  # pieces joined as they are, with no spaces added
    # Reserved special tokens (a chat's turns) become real ones, at the ids they have here
    names = sorted(tokenizer.specials, key=tokenizer.specials.get)
    hf.add_special_tokens([tk.AddedToken(name, special=True, normalized=False) for name in names])
    if any(hf.token_to_id(name) != tokenizer.specials[name] for name in names):
        raise RepytilianError("the special tokens could not keep their ids in the Hugging Face tokenizer")
    return hf.to_str()


def export_hf(model: GPT, tokenizer: Tokenizer, out: str | Path) -> Path:
    """Write the export into a new folder `out` (complete, or not at all)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RepytilianError(f"{out} already exists; export into a new folder")
    llama = family(model) != "gpt2"  # Llama's layout (Qwen3's too)
    config = llama_config(model) if llama else gpt2_config(model)
    weights = llama_weights(model) if llama else gpt2_weights(model)
    tokenizer_json = hf_tokenizer_json(tokenizer)
    chat = ChatFormat.of(tokenizer)  # the model's chat format, as transformers' apply_chat_template reads it
    chat_settings = {} if chat is None else {"chat_template": TEMPLATE, "eos_token": TOKENS["end"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
        save_file(weights, staging / "model.safetensors", metadata={"format": "pt"})
        (staging / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        (staging / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model.config.block_size,
            "clean_up_tokenization_spaces": False,
            **chat_settings,
        }, indent=1), encoding="utf-8")
        generation = {"do_sample": True, "temperature": DEFAULT_TEMPERATURE, "top_k": DEFAULT_TOP_K}
        if chat is not None:  # an answer ends at the end of its turn, in transformers' generate too
            generation["eos_token_id"] = chat.end
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=1), encoding="utf-8")
        shareable(staging)
        fsync_tree(staging)
        if out.exists():
            out.rmdir()
        staging.rename(out)
        fsync_dir(out.parent)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise RepytilianError(f"could not write {out}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
