"""`repytilian export -m DIR --format hf OUT`: a folder that Hugging Face `transformers` loads.

The classic architecture is GPT-2's, so the export is a GPT-2 model: config.json in transformers'
GPT2Config fields, model.safetensors under GPT-2's weight names with its Conv1D layout (each
matrix stored (in, out), the transpose of nn.Linear's), and a tokenizer.json built with the
`tokenizers` library that encodes and decodes as ours does, with a tokenizer_config.json, so
both AutoModelForCausalLM.from_pretrained(OUT) and AutoTokenizer.from_pretrained(OUT) work.
Nothing here imports transformers: the files are written from their published formats.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .errors import RepytilianError
from .fileio import fsync_dir
from .model import GPT
from .tokenizers import Tokenizer
from .tokenizers.words import TOKEN_PATTERN

CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")  # GPT-2 stores these (in, out)
ACTIVATION_NAMES = {"gelu": "gelu", "relu": "relu"}  # ours -> transformers' ACT2FN names (exact GELU)


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
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "torch_dtype": "float32",
    }


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
    return hf.to_str()


def export_hf(model: GPT, tokenizer: Tokenizer, out: str | Path) -> Path:
    """Write the export into a new folder `out` (complete, or not at all)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RepytilianError(f"{out} already exists; export into a new folder")
    config = gpt2_config(model)
    weights = gpt2_weights(model)
    tokenizer_json = hf_tokenizer_json(tokenizer)
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
        }, indent=1), encoding="utf-8")
        (staging / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.8,
                                                                    "top_k": 200}, indent=1), encoding="utf-8")
        for f in staging.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
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
