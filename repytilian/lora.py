"""Low-rank adapters (LoRA, Hu et al. 2021) for fine-tuning a large base on a CPU: `--lora RANK`.

Each matrix of the blocks (attention's c_attn and c_proj, the MLP's c_fc and c_proj) stays frozen,
and learns a low-rank change beside it: W x + (alpha / r) B A x, with A (r x in) random and
B (out x r) zero, so training starts from the base's own function. Only A and B are trained, and
the token embeddings where asked (a chat fine-tune's new tokens need their rows); the optimiser
keeps moments for those alone. A saved folder holds the merged weights,
W + (alpha / r) B A: an ordinary model that every surface loads as it is.

Written here rather than taken from `peft`: our blocks are plain nn.Linear layers, so the whole
method is the class below and a merge, and the package gains no dependency (peft wraps
transformers' models, which ours are not).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

TARGETS = ("c_attn", "c_proj", "c_fc")  # the matrices of attention and the MLP in every block


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))  # as nn.Linear initialises its weight
        self.b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        self.register_buffer("scale", torch.tensor(alpha / rank, device=base.weight.device))  # saved with a and b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + F.linear(F.linear(x, self.a), self.b) * self.scale

    @property
    def weight(self) -> torch.Tensor:
        """The merged matrix, for code that reads a layer's weight (the cached decoder)."""
        return merged(self.base.weight, self.a, self.b, self.scale)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, embeddings: bool = False) -> int:
    """Freeze `model` (but its token embeddings and head, with `embeddings`) and give each block matrix an
    adapter of `rank` (alpha: 2 x rank unless given). Returns how many parameters are trained."""
    if rank < 1:
        raise ValueError(f"the LoRA rank must be at least 1, got {rank}")
    alpha = 2.0 * rank if alpha is None else alpha
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.transformer.h:
        for parent in (block.attn, block.mlp):
            for name in TARGETS:
                layer = getattr(parent, name, None)
                if isinstance(layer, nn.Linear):
                    setattr(parent, name, LoRALinear(layer, rank, alpha))
    if embeddings:  # new tokens' rows must be learned, in and out: the table and the head (one, where tied)
        model.transformer.wte.weight.requires_grad_(True)
        model.lm_head.weight.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merged(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """W + scale B A, computed in float32, in W's dtype."""
    return weight + (scale.float() * (b.float() @ a.float())).to(weight.dtype)


def merged_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with every adapter merged into its matrix, under the plain model's names."""
    out = {}
    for key, value in state.items():
        if key.endswith(".base.weight"):
            layer = key[: -len(".base.weight")]
            out[layer + ".weight"] = merged(value, state[layer + ".a"], state[layer + ".b"], state[layer + ".scale"])
        elif key.endswith(".base.bias"):
            out[key[: -len(".base.bias")] + ".bias"] = value
        elif not key.endswith((".a", ".b", ".scale")):
            out[key] = value
    return out


def merge_lora(model: nn.Module) -> None:
    """Put each adapter into its matrix and the plain layer back, in place; all trainable again."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                with torch.no_grad():
                    child.base.weight.copy_(child.weight)
                setattr(module, name, child.base)
    for p in model.parameters():
        p.requires_grad_(True)


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())
