"""`repytilian import --from hf DIR OUT`: a Hugging Face model folder on disk, as our model folder.

Reads GPT-2-family folders (gpt2, distilgpt2, a GPT2LMHeadModel of your own: `model_type` gpt2)
and the Llama folders `repytilian export` writes for `--arch modern` (Qwen3's, with QK-norm), from
their config.json, safetensors weights and tokenizer (tokenizer.json, or GPT-2's vocab.json +
merges.txt), so that `training.py -l OUT -d book.txt` fine-tunes it and `generate.py -m OUT`
samples it. Weights are read from safetensors only: a folder with only pytorch_model.bin (a
pickle) is refused, with how to convert it. Nothing here downloads: DIR is a folder, or the name
of a Hub model ("gpt2") that huggingface_hub has downloaded into its cache.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..config import RMS_EPS, ROPE_THETA, ModelConfig
from ..errors import RepytilianError
from ..events import note
from ..model import GPT
from ..tokenizers.bpe import BPETokenizer, _hf
from ..tokenizers.specials import padding_names
from .hf import CONV1D

# A Hub model's name: "gpt2", "openai-community/gpt2" (its owner, then its name)
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RepytilianError(f"{path.parent} has no {path.name}: it is not a Hugging Face model folder") from None
    except (OSError, ValueError) as e:
        raise RepytilianError(f"cannot read {path} ({e})") from None
    if not isinstance(data, dict):
        raise RepytilianError(f"{path} is not a JSON object")
    return data


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    files = [folder / "model.safetensors"]
    if index.is_file():  # sharded: model-00001-of-00002.safetensors, ...
        files = sorted({folder / name for name in _read_json(index).get("weight_map", {}).values()})
    if not all(f.is_file() for f in files):
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        if pickled:
            raise RepytilianError(
                f"{folder} has its weights only as {pickled[0]}, a pickle, which Repytilian never loads (it can run "
                "code). Convert it where you trust it: AutoModelForCausalLM.from_pretrained(DIR)"
                ".save_pretrained(NEW_DIR, safe_serialization=True)")
        raise RepytilianError(f"{folder} has no model.safetensors")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(f))
        except (SafetensorError, OSError) as e:
            raise RepytilianError(f"{f} is damaged or not safetensors ({e})") from None
    return {k: v.float() for k, v in tensors.items()}


def _take(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...]) -> torch.Tensor:
    if name not in tensors:
        raise RepytilianError(f"the weights have no {name}")
    t = tensors[name]
    if tuple(t.shape) != shape:
        raise RepytilianError(f"{name} has shape {tuple(t.shape)}, the config says {shape}")
    return t


def _gpt2(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    C = int(config.get("n_embd", 768))
    act = config.get("activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        raise RepytilianError(f"activation_function {act!r} is not one Repytilian has ({', '.join(GPT2_ACTIVATIONS)})")
    inner = config.get("n_inner") or 4 * C
    unsupported = [name for name, bad in (("n_inner", inner != 4 * C),
                                          ("scale_attn_by_inverse_layer_idx", config.get("scale_attn_by_inverse_layer_idx")),
                                          ("add_cross_attention", config.get("add_cross_attention")),
                                          ("scale_attn_weights", config.get("scale_attn_weights", True) is False),
                                          ("layer_norm_epsilon", abs(config.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-9))
                   if bad]
    if unsupported:
        raise RepytilianError(f"this GPT-2 variant sets {', '.join(unsupported)} to values Repytilian's GPT has not")
    # Hugging Face's own GPT-2 files name the body "h.0..." (GPT2Model) or "transformer.h.0..." (LMHead)
    tensors = {(k if k.startswith(("transformer.", "lm_head.")) else "transformer." + k): v for k, v in tensors.items()}
    tied = bool(config.get("tie_word_embeddings", True)) or "lm_head.weight" not in tensors
    mcfg = ModelConfig(vocab_size=int(config["vocab_size"]), block_size=int(config.get("n_positions", 1024)),
                       n_layer=int(config.get("n_layer", 12)), n_head=int(config.get("n_head", 12)), n_embd=C,
                       dropout=0.0, bias=True, activation=GPT2_ACTIVATIONS[act], tie_embeddings=tied)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(mcfg).state_dict().items()}
    state = {}
    for name, shape in expected.items():
        if name == "lm_head.weight" and tied:
            continue
        conv = any(f".{layer}.weight" in name for layer in CONV1D)  # GPT-2's Conv1D stores (in, out)
        t = _take(tensors, name, shape[::-1] if conv else shape)
        state[name] = t.t().contiguous() if conv else t
    if tied:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return mcfg, state


def _llama(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A Llama folder, or a Qwen3 one (Llama's layout with each head's queries and keys normalised)."""
    C, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    tied, qk_norm = bool(config.get("tie_word_embeddings", False)), config.get("model_type") == "qwen3"
    mcfg = ModelConfig(vocab_size=int(config["vocab_size"]), block_size=int(config.get("max_position_embeddings", 2048)),
                       n_layer=int(config["num_hidden_layers"]), n_head=heads, n_embd=C, dropout=0.0, bias=False,
                       activation="swiglu", tie_embeddings=tied, position="rope", norm="rmsnorm", qk_norm=qk_norm)
    problems = [name for name, bad in (
        ("num_key_value_heads", int(config.get("num_key_value_heads", heads)) != heads),
        ("head_dim", int(config.get("head_dim", C // heads)) != C // heads),
        ("intermediate_size", int(config.get("intermediate_size", -1)) != mcfg.mlp_hidden),
        ("rope_theta", float(config.get("rope_theta", ROPE_THETA)) != ROPE_THETA),
        ("rope_scaling", config.get("rope_scaling") not in (None, {})),
        ("rms_norm_eps", abs(float(config.get("rms_norm_eps", RMS_EPS)) - RMS_EPS) > 1e-12),
        ("attention_bias", bool(config.get("attention_bias"))), ("mlp_bias", bool(config.get("mlp_bias"))),
        ("use_sliding_window", bool(config.get("use_sliding_window"))))
        if bad]
    if problems:
        raise RepytilianError(f"only the Llama and Qwen3 folders `repytilian export` writes can be imported; this one "
                              f"differs in {', '.join(problems)}")
    H = mcfg.mlp_hidden
    state = {"transformer.wte.weight": _take(tensors, "model.embed_tokens.weight", (mcfg.vocab_size, C)),
             "transformer.ln_f.weight": _take(tensors, "model.norm.weight", (C,))}
    state["lm_head.weight"] = (state["transformer.wte.weight"] if tied
                               else _take(tensors, "lm_head.weight", (mcfg.vocab_size, C)))
    for i in range(mcfg.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = (_take(tensors, theirs + f"self_attn.{n}_proj.weight", (C, C)) for n in "qkv")
        gate = _take(tensors, theirs + "mlp.gate_proj.weight", (H, C))
        up = _take(tensors, theirs + "mlp.up_proj.weight", (H, C))
        state |= {
            ours + "ln_1.weight": _take(tensors, theirs + "input_layernorm.weight", (C,)),
            ours + "attn.c_attn.weight": torch.cat([q, k, v]),
            ours + "attn.c_proj.weight": _take(tensors, theirs + "self_attn.o_proj.weight", (C, C)),
            ours + "ln_2.weight": _take(tensors, theirs + "post_attention_layernorm.weight", (C,)),
            ours + "mlp.c_fc.weight": torch.cat([gate, up]),
            ours + "mlp.c_proj.weight": _take(tensors, theirs + "mlp.down_proj.weight", (C, H)),
        }
        if qk_norm:
            state |= {ours + f"attn.{n}_norm.weight": _take(tensors, theirs + f"self_attn.{n}_norm.weight", (C // heads,))
                      for n in "qk"}
    return mcfg, state


def _tokenizer(folder: Path) -> BPETokenizer:
    """The folder's own tokenizer, run by the `tokenizers` library as transformers runs it."""
    tk = _hf()
    if (folder / "tokenizer.json").is_file():
        return BPETokenizer.from_json((folder / "tokenizer.json").read_text(encoding="utf-8"),
                                      str(folder / "tokenizer.json"))
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():  # GPT-2's original files: byte-level BPE
        hf = tk.Tokenizer(tk.models.BPE.from_file(str(vocab), str(merges)))
        hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = tk.decoders.ByteLevel()
        return BPETokenizer(hf)
    raise RepytilianError(f"{folder} has no tokenizer.json (nor vocab.json and merges.txt)")


def hub_cache() -> Path:
    """Where huggingface_hub keeps what it downloaded (its own rules: HF_HUB_CACHE, then HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return Path(home) / "hub"


def cached_folder(name: str) -> Path | None:
    """The folder of the Hub model `name` ("gpt2", "openai-community/gpt2") that huggingface_hub
    downloaded into its cache: the snapshot its refs/main names, else the newest; None if absent."""
    if not HUB_NAME.fullmatch(name):
        return None
    repo = hub_cache() / ("models--" + name.replace("/", "--"))
    try:
        ref = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
        if (repo / "snapshots" / ref).is_dir():
            return repo / "snapshots" / ref
    except OSError:
        pass
    snapshots = [p for p in (repo / "snapshots").glob("*") if p.is_dir()]
    return max(snapshots, key=lambda p: p.stat().st_mtime) if snapshots else None


def _hf_folder(folder: Path) -> Path:
    """`folder`, or the cached snapshot of the Hub model it names; what is wrong, in words."""
    if folder.is_dir():
        if _read_json(folder / "config.json").get("format") == "repytilian-model":
            raise RepytilianError(f"{folder} is a Repytilian model folder already: load, sample or fine-tune it as it is")
        return folder
    if not folder.exists() and (cached := cached_folder(folder.as_posix())) is not None:
        note(f"reading the Hugging Face model {folder} from its cache: {cached}")
        return cached
    if not folder.exists() and HUB_NAME.fullmatch(folder.as_posix()):
        raise RepytilianError(f"no folder {folder} here, nor the Hugging Face model {folder} in {hub_cache()}; "
                              "Repytilian downloads nothing: fetch it once with huggingface_hub "
                              f"(snapshot_download({folder.as_posix()!r})) and import it again by name")
    raise RepytilianError(f"{folder} is not a folder (give the folder with config.json and model.safetensors)")


def import_hf(folder: str | Path) -> tuple[GPT, BPETokenizer, dict[str, Any]]:
    """The model, its tokenizer and what to record of where it came from: `folder` is a model's
    folder, or the name of a Hub model that huggingface_hub has in its cache."""
    folder = _hf_folder(Path(folder))
    config = _read_json(folder / "config.json")
    kind = config.get("model_type")
    if kind == "gpt2":
        mcfg, state = _gpt2(config, _weights(folder))
    elif kind in ("llama", "qwen3"):
        mcfg, state = _llama(config, _weights(folder))
    else:
        raise RepytilianError(f"model_type {kind!r}: Repytilian imports GPT-2-family models (gpt2, distilgpt2, ...) "
                              "and its own Llama and Qwen3 exports")
    tokenizer = _tokenizer(folder)
    if tokenizer.vocab_size > mcfg.vocab_size:
        raise RepytilianError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary only "
                              f"{mcfg.vocab_size}: the model cannot score them all")
    if tokenizer.vocab_size < mcfg.vocab_size:
        # A vocabulary rounded up (to a multiple of 64 or 128, for fast matrix products): the rows
        # stay, so the logits are transformers', and get tokens that no text encodes to and that
        # generation never chooses (tokenizers/specials.py)
        tokenizer = tokenizer.with_specials(padding_names(mcfg.vocab_size - tokenizer.vocab_size))
    model = GPT(mcfg)
    model.load_state_dict(state)
    source = {"format": "huggingface", "model_type": kind, "folder": str(folder.resolve()),
              "architectures": config.get("architectures")}
    return model, tokenizer, source
