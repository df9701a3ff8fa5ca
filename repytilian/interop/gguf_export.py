"""`repytilian export --format gguf`: one .gguf file for llama.cpp and Ollama, written with `gguf`.

The classic architecture is llama.cpp's `gpt2` (learned positions, LayerNorm with biases, a fused
QKV matrix); `--arch modern` is its `llama` (rotary positions, RMSNorm, SwiGLU, no biases), whose
query and key matrices are reordered for GGML's rotary layout as llama.cpp's own converter does,
and with QK-norm its `qwen3` (the same with the heads' query and key norms), whose rotation pairs
each head's halves as ours does, so its matrices go in as they are.
Weights are stored in float32, in nn.Linear's (out, in) layout, which is GGUF's too. The
tokenizer goes in as the one of llama.cpp's that tokenizes as ours does (gguf_vocab.py: byte-level
BPE, or unigram for characters and words, with one added `<unk>` row). The file names an end of
text and asks for no start token, so llama.cpp neither stops early nor adds to the prompt. `gguf`
is optional (`pip install 'repytilian[gguf]'`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import RMS_EPS, ROPE_THETA
from ..errors import RepytilianError
from ..model import GPT
from ..runtime.fileio import atomic_output
from ..tokenizers import Tokenizer
from .gguf_vocab import GGUFVocabulary, gguf_vocabulary
from .hf import family


def _gguf():
    try:
        import gguf
    except ImportError:
        raise RepytilianError("exporting to GGUF needs the 'gguf' package: pip install 'repytilian[gguf]' "
                              "(or pip install gguf)") from None
    return gguf


def _permute_for_rope(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows of each head from (first half, second half) pairing to GGML's interleaved pairing."""
    rows, cols = w.shape
    return w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def with_mean_rows(w: torch.Tensor, rows: int) -> torch.Tensor:
    """`w` with `rows` more rows, each the mean of its rows (gguf_vocab.py says why)."""
    return torch.cat([w, w.mean(0, keepdim=True).expand(rows, -1)]) if rows else w


def gguf_tensors(model: GPT, added_rows: int = 0) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's names for the model's architecture."""
    cfg = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    kind = family(model)
    llama = kind != "gpt2"  # Llama's layout (Qwen3's too)
    out = {"token_embd.weight": with_mean_rows(sd["transformer.wte.weight"], added_rows),
           "output_norm.weight": sd["transformer.ln_f.weight"],
           # written even when tied: llama.cpp's gpt2 expects it
           "output.weight": with_mean_rows(sd["lm_head.weight"], added_rows)}
    if not llama:
        out["position_embd.weight"] = sd["transformer.wpe.weight"]
        out["output_norm.bias"] = sd.get("transformer.ln_f.bias", torch.zeros(cfg.n_embd))
    for i in range(cfg.n_layer):
        ours, blk = f"transformer.h.{i}.", f"blk.{i}."
        if llama:
            q, k, v = sd[ours + "attn.c_attn.weight"].split(cfg.n_embd)
            gate, up = sd[ours + "mlp.c_fc.weight"].split(cfg.mlp_hidden)
            if kind == "llama":  # GGML's llama rotates interleaved pairs; its qwen3, halves as ours
                q, k = _permute_for_rope(q, cfg.n_head), _permute_for_rope(k, cfg.n_head)
            else:
                out |= {blk + "attn_q_norm.weight": sd[ours + "attn.q_norm.weight"],
                        blk + "attn_k_norm.weight": sd[ours + "attn.k_norm.weight"]}
            out |= {blk + "attn_norm.weight": sd[ours + "ln_1.weight"],
                    blk + "attn_q.weight": q, blk + "attn_k.weight": k,
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
    kind = family(model)
    llama = kind != "gpt2"
    vocab = gguf_vocabulary(tokenizer)
    tensors = gguf_tensors(model, vocab.added_rows)
    with atomic_output(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), kind)
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
            w.add_vocab_size(len(vocab.tokens))
        else:
            w.add_layer_norm_eps(1e-5)
        _add_vocabulary(w, vocab)
        if vocab.chat_template is not None:
            w.add_chat_template(vocab.chat_template)
        for tensor_name, array in tensors.items():
            w.add_tensor(tensor_name, array)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out


def _add_vocabulary(w, vocab: GGUFVocabulary) -> None:
    w.add_tokenizer_model(vocab.model)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    if vocab.model == "gpt2":
        w.add_tokenizer_pre("gpt-2")
        w.add_token_merges(vocab.merges)
    else:  # unigram: text as typed, no space put before it or spaces merged
        w.add_token_scores(vocab.scores)
        w.add_unk_token_id(vocab.unknown)
        w.add_add_space_prefix(False)
        w.add_remove_extra_whitespaces(False)
    w.add_bos_token_id(vocab.end)
    w.add_eos_token_id(vocab.end)
    w.add_add_bos_token(False)  # the prompt is encoded as we encode it, nothing put before it
    w.add_add_eos_token(False)
