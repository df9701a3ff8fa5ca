"""`repytilian import --from nanogpt CKPT OUT --data FILE`: bring a nanoGPT model along.

nanoGPT's train.py saves `ckpt.pt`: {'model': state dict, 'model_args': {n_layer, n_head, n_embd,
block_size, bias, vocab_size, dropout}, 'optimizer', 'iter_num', 'best_val_loss', 'config'}. It
is read with torch.load(weights_only=True) (tensors and plain values only, never code). Our GPT
names its weights as nanoGPT's model.py does, so the state dict maps across once the prefix that
torch.compile adds (`_orig_mod.`) and the causal-mask buffer of nanoGPT's non-flash attention are
dropped. nanoGPT keeps its character vocabulary in a pickle (meta.pkl), which is never read:
the vocabulary is rebuilt from the training text given with --data, as nanoGPT's
data/shakespeare_char/prepare.py builds it (the sorted set of the text's characters).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.corpus import read_text_file
from ..errors import RepytilianError
from ..model import GPT, ModelConfig
from ..tokenizers import CharacterTokenizer
from .refusals import refusal

COMPILED_PREFIX = "_orig_mod."
ARG_NAMES = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RepytilianError(f"no such file: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged files and refused pickles raise several types; none ran code
        raise RepytilianError(f"{path} cannot be read safely as a nanoGPT checkpoint: {refusal(e)}; "
                              "Repytilian never runs code from a checkpoint") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("model_args"), dict):
        raise RepytilianError(f"{path} is not a nanoGPT checkpoint (no 'model' and 'model_args' in it)")
    return ckpt


def convert(ckpt_path: str | Path, data_file: str | Path) -> tuple[GPT, CharacterTokenizer, dict[str, Any]]:
    ckpt = read_checkpoint(ckpt_path)
    args = ckpt["model_args"]
    missing = [k for k in ARG_NAMES if k not in args]
    if missing:
        raise RepytilianError(f"{ckpt_path}: model_args lacks {', '.join(missing)}")
    try:
        cfg = ModelConfig(**{k: args[k] for k in ARG_NAMES})
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise RepytilianError(f"{ckpt_path}: model_args do not describe a GPT ({e})") from None
    text = read_text_file(data_file)
    tokenizer = CharacterTokenizer(sorted(set(text)))
    if tokenizer.vocab_size != cfg.vocab_size:
        raise RepytilianError(
            f"{data_file} has {tokenizer.vocab_size} distinct characters but the model's vocabulary is "
            f"{cfg.vocab_size}: give the text the model was trained on (nanoGPT's input.txt), "
            "or a character-level model (GPT-2-vocabulary models are not imported)"
        )
    state = {k.removeprefix(COMPILED_PREFIX): v for k, v in ckpt["model"].items()}
    state = {k: v for k, v in state.items() if not k.endswith(".attn.bias")}  # the non-flash causal mask
    model = GPT(cfg)
    state.setdefault("lm_head.weight", state.get("transformer.wte.weight"))
    expected = {k: v.shape for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    wrong = sorted(k for k in expected if k not in got or tuple(expected[k]) != got[k])
    extra = sorted(set(got) - set(expected))
    if wrong or extra:
        detail = "; ".join(f"{label}: {', '.join(names[:3])}" for label, names in
                           (("missing or of another shape", wrong), ("unexpected", extra)) if names)
        raise RepytilianError(f"{ckpt_path}: the weights do not fit model_args ({detail})")
    if not torch.equal(state["lm_head.weight"], state["transformer.wte.weight"]):
        raise RepytilianError(f"{ckpt_path}: the output head is not tied to the token embedding, as nanoGPT's is")
    model.load_state_dict(state)
    best = ckpt.get("best_val_loss")
    info = {
        "iter_num": ckpt.get("iter_num"),
        "best_val_loss": float(best) if isinstance(best, (int, float, torch.Tensor)) else None,
        "dataset": (ckpt.get("config") or {}).get("dataset") if isinstance(ckpt.get("config"), dict) else None,
    }
    return model.eval(), tokenizer, info
