"""`repytilian export --format gguf`: one .gguf file for llama.cpp and Ollama, written with `gguf`.

The classic architecture is llama.cpp's `gpt2` (learned positions, LayerNorm with biases, a fused
QKV matrix); `--arch modern` is its `llama` (rotary positions, RMSNorm, SwiGLU, no biases), whose
query and key matrices are reordered for GGML's rotary layout as llama.cpp's own converter does.
Weights are stored in float32, in nn.Linear's (out, in) layout, which is GGUF's too. The
tokenizer goes in as llama.cpp's byte-level BPE ("gpt2" tokenizer model): bpe models and models
imported from Hugging Face have one; character and word vocabularies have no form llama.cpp
loads, so those models are refused with a clear message. The file names an end-of-text token
(`end_of_text_id`) and asks for no start token, so llama.cpp neither stops early nor adds to the
prompt. `gguf` is optional
(`pip install 'repytilian[gguf]'`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..chat_format import TEMPLATE, ChatFormat
from ..config import RMS_EPS, ROPE_THETA
from ..errors import RepytilianError
from ..model import GPT
from ..runtime.fileio import atomic_output
from ..tokenizers import Tokenizer
from .hf import is_llama


def _gguf():
    try:
        import gguf
    except ImportError:
        raise RepytilianError("exporting to GGUF needs the 'gguf' package: pip install 'repytilian[gguf]' "
                              "(or pip install gguf)") from None
    return gguf


def bpe_vocabulary(tokenizer: Tokenizer) -> tuple[list[str], list[str], list[int]]:
    """(tokens by id, merges "a b", token types) of a byte-level BPE tokenizer, as llama.cpp wants them."""
    hf = getattr(tokenizer, "hf", None)
    if tokenizer.name != "bpe" or hf is None:
        raise RepytilianError(
            f"the {tokenizer.name} tokenizer has no form llama.cpp can load: GGUF export works for models with a "
            "byte-level BPE tokenizer (`tokenizer` bpe, or a GPT-2 imported from Hugging Face); train with "
            "`tokenizer` bpe", ("tokenizer",))
    data = json.loads(hf.to_str())
    model = data.get("model", {})
    if model.get("type") != "BPE":
        raise RepytilianError("this tokenizer is not a BPE model, which llama.cpp's gpt2 tokenizer needs")
    vocab: dict[str, int] = model["vocab"]
    added = {t["id"]: t["content"] for t in data.get("added_tokens", [])}
    size = tokenizer.vocab_size
    tokens = [""] * size
    for token, i in vocab.items():
        if i < size:
            tokens[i] = token
    types = [1] * size  # NORMAL
    for i, content in added.items():
        if i < size:
            tokens[i], types[i] = content, 3  # CONTROL
    missing = [i for i, t in enumerate(tokens) if not t]
    if missing:
        raise RepytilianError(f"the tokenizer has no text for ids {missing[:5]}: it cannot be written to GGUF")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, merges, types


# Text ends here: the names models imported from Hugging Face use for their end-of-text token.
END_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")
# Bytes that UTF-8 never contains (0xFF, 0xFE ... 0xF5, 0xC1, 0xC0), as byte-level BPE writes them.
NEVER_IN_TEXT = tuple(chr(b) for b in range(0xFF, 0xF4, -1)) + ("\u00c1", "\u00c0")


def end_of_text_id(tokens: list[str], types: list[int]) -> int:
    """The id llama.cpp should take for the start and end of text.

    Without one, llama.cpp takes id 11 for both: a model trained here has no end token, and id 11
    is an ordinary piece of text (`,` in the shipped bpe model), so generation stopped at the first
    comma. A model with a real end-of-text token uses it. Otherwise the token of a byte that UTF-8
    never contains stands in: no training text has it, so the model has learnt never to predict it,
    and llama.cpp generates until its length limit, as we do.
    """
    for i, (token, kind) in enumerate(zip(tokens, types)):
        if kind == 3 and token in END_TOKENS:
            return i
    for byte in NEVER_IN_TEXT:
        if byte in tokens:
            return tokens.index(byte)
    raise RepytilianError("this byte-level vocabulary lacks the bytes that UTF-8 never uses: it cannot be "
                          "given an end-of-text token llama.cpp would not cut text at")


def _permute_for_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of each head from (first half, second half) pairing to GGML's interleaved pairing."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def gguf_tensors(model: GPT) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's names for the model's architecture."""
    cfg = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    llama = is_llama(model)
    out = {"token_embd.weight": sd["transformer.wte.weight"], "output_norm.weight": sd["transformer.ln_f.weight"],
           "output.weight": sd["lm_head.weight"]}  # written even when tied: llama.cpp's gpt2 expects it
    if not llama:
        out["position_embd.weight"] = sd["transformer.wpe.weight"]
        out["output_norm.bias"] = sd.get("transformer.ln_f.bias", torch.zeros(cfg.n_embd))
    for i in range(cfg.n_layer):
        ours, blk = f"transformer.h.{i}.", f"blk.{i}."
        if llama:
            q, k, v = sd[ours + "attn.c_attn.weight"].split(cfg.n_embd)
            gate, up = sd[ours + "mlp.c_fc.weight"].split(cfg.mlp_hidden)
            out |= {blk + "attn_norm.weight": sd[ours + "ln_1.weight"],
                    blk + "attn_q.weight": _permute_for_rope(q, cfg.n_head),
                    blk + "attn_k.weight": _permute_for_rope(k, cfg.n_head),
                    blk + "attn_v.weight": v, blk + "attn_output.weight": sd[ours + "attn.c_proj.weight"],
                    blk + "ffn_norm.weight": sd[ours + "ln_2.weight"], blk + "ffn_gate.weight": gate,
                    blk + "ffn_up.weight": up, blk + "ffn_down.weight": sd[ours + "mlp.c_proj.weight"]}
            continue
        for theirs, mine in (("attn_norm", "ln_1"), ("attn_qkv", "attn.c_attn"), ("attn_output", "attn.c_proj"),
                             ("ffn_norm", "ln_2"), ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj")):
            out[f"{blk}{theirs}.weight"] = sd[f"{ours}{mine}.weight"]
            bias = sd.get(f"{ours}{mine}.bias")
            width = sd[f"{ours}{mine}.weight"].shape[0]
            out[f"{blk}{theirs}.bias"] = bias if bias is not None else torch.zeros(width)  # GPT-2 has biases
    return {k: v.contiguous().numpy() for k, v in out.items()}


def export_gguf(model: GPT, tokenizer: Tokenizer, out: str | Path, name: str = "repytilian") -> Path:
    gguf = _gguf()
    out = Path(out)
    if out.exists():
        raise RepytilianError(f"{out} already exists; export into a new file")
    cfg = model.config
    if cfg.activation not in ("gelu", "gelu_tanh", "swiglu"):
        raise RepytilianError(f"llama.cpp's gpt2 computes GELU; this model uses {cfg.activation}")
    llama = is_llama(model)
    tokens, merges, types = bpe_vocabulary(tokenizer)
    chat = ChatFormat.of(tokenizer)
    end = chat.end if chat is not None else end_of_text_id(tokens, types)  # a chat model's answer ends its turn
    tensors = gguf_tensors(model)
    arch = "llama" if llama else "gpt2"
    with atomic_output(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(name)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        w.add_context_length(cfg.block_size)
        w.add_embedding_length(cfg.n_embd)
        w.add_block_count(cfg.n_layer)
        w.add_feed_forward_length(cfg.mlp_hidden)
        w.add_head_count(cfg.n_head)
        if llama:
            w.add_head_count_kv(cfg.n_head)
            w.add_layer_norm_rms_eps(RMS_EPS)
            w.add_rope_dimension_count(cfg.n_embd // cfg.n_head)
            w.add_rope_freq_base(ROPE_THETA)
            w.add_vocab_size(cfg.vocab_size)
        else:
            w.add_layer_norm_eps(1e-5)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(end)
        w.add_eos_token_id(end)
        w.add_add_bos_token(False)  # the prompt is encoded as we encode it, nothing put before it
        w.add_add_eos_token(False)
        if chat is not None:
            w.add_chat_template(TEMPLATE)  # how llama.cpp (and Ollama, LM Studio) render a conversation
        for tensor_name, array in tensors.items():
            w.add_tensor(tensor_name, array)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out
