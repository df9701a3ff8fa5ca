"""Optimisers: AdamW for everything, or Muon for the blocks' matrices with AdamW for the rest.

Muon orthogonalises each 2-D update with a few Newton-Schulz iterations; with
`adjust_lr_fn="match_rms_adamw"` its steps have AdamW's size, so one learning rate and schedule
serve both. Embeddings, the output head, gains and biases stay on AdamW, as Muon's authors use
it. Measured on 2 CPU cores: the speedrun preset reached val 1.63 in 90 s with Muon against
about 1.70 with AdamW alone, though each step costs about 40% more (docs/benchmarks.md).

`torch.optim.Muon` runs its iteration in bf16, always: on a CPU without native bf16 that is
about 100x slower matmuls, and a Muon step there cost more than the whole forward and backward
pass. `Muon` below is torch's optimiser (its settings, state and checkpoints unchanged) with the
iteration in a format of our choosing: bf16 where training computes in bf16, float32 elsewhere.

Gradient clipping (`clip_and_step`) scales the gradients down to a global norm of `grad_clip`.
torch's clip_grad_norm_ does that in a pass of its own over every gradient; where AdamW is fused
(CPUs and CUDA), the scale rides instead in AdamW's own pass, as the divisor `grad_scale` that
torch's GradScaler hands it: the same update to within a rounding (a division by 1/c where clipping
multiplies by c), and bit for bit the same where nothing is clipped. Measured on a `tiny` bf16
compiled step (2-core Xeon, 2026-12-04): clipping 0.76 -> 0.33 ms of a 13 ms step.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch

from .model import GPT


def make_optimizer(model: GPT, name: str, lr: float, weight_decay: float, betas: tuple[float, float],
                   fused: bool, ns_dtype: torch.dtype = torch.bfloat16) -> Any:
    if name == "adamw":
        return torch.optim.AdamW(model.optimizer_groups(weight_decay), lr=lr, betas=betas,
                                 **({"fused": True} if fused else {}))
    return MuonWithAdamW(model, lr, weight_decay, betas, fused, ns_dtype)


def optimizer_parts(optimizer: Any) -> list[torch.optim.Optimizer]:
    """The torch optimisers that make up one of make_optimizer's."""
    return [optimizer.muon, optimizer.adamw] if isinstance(optimizer, MuonWithAdamW) else [optimizer]


def _fused_adamw(part: torch.optim.Optimizer) -> bool:
    return isinstance(part, torch.optim.AdamW) and all(g.get("fused") for g in part.param_groups)


def clip_and_step(optimizer: Any, parameters: Iterable[torch.Tensor], max_norm: float) -> None:
    """clip_grad_norm_(parameters, max_norm) (0: no clipping), then optimizer.step(), the clipping
    folded into fused AdamW's pass (module docstring)."""
    parts = optimizer_parts(optimizer)
    grads = [p.grad for p in parameters if p.grad is not None] if max_norm > 0 else []
    if not grads:
        for part in parts:
            part.step()
        return
    # get_total_norm's arithmetic, in the parameters' order (a sum's rounding depends on it),
    # without its grouping by device and format (one model: one of each)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    for part in parts:
        if not _fused_adamw(part):
            torch.nn.utils.clip_grads_with_norm_([p for g in part.param_groups for p in g["params"]], max_norm, total)
            part.step()
            continue
        # clip_grad_norm_ multiplies by min(1, max_norm / (total + 1e-6)); AdamW divides by
        # max(1, total / max_norm) (its 1e-6 only keeps a zero norm from dividing by zero)
        part.grad_scale = (total / max_norm).clamp_min_(1.0)
        try:
            part.step()
        finally:
            del part.grad_scale


def orthogonalise(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration: about U V^T of g = U S V^T (singular values pushed
    near 1, not exactly to it), computed in `dtype`. The same arithmetic as torch.optim.Muon's, on
    one matrix or on a stack of them (matrices, rows, columns), each its own."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT  # iterate on the wide side: the Gram matrix x x^T is then the smaller one
    # spectral norm at most 1 (a copy: g may be the momentum buffer)
    x = x / torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = _quintic(x, gram, a, b, c)
    return x.mT if tall else x


def _quintic(x: torch.Tensor, gram: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    if x.dim() == 2:
        return torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)


def adjusted_lr(lr: float, how: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix learning-rate scale."""
    rows, cols = shape[:2]
    if how is None or how == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if how == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr


class Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz iteration in `ns_dtype` (torch's: always bf16)."""

    def __init__(self, params: Any, ns_dtype: torch.dtype = torch.bfloat16, **settings: Any):
        super().__init__(params, **settings)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
            grads = [p.grad for p in params]
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_lerp_(buffers, grads, 1 - momentum)
            updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
            # Matrices of one shape (each layer's own of each kind) orthogonalised as one stack: a few
            # batched products in place of a few small ones each, the same arithmetic for each matrix.
            # Quarter's 24 matrices (2026-12-04): 27 -> 12 ms a step in bf16 on 2 Xeon cores, 30 -> 23 in
            # float32 as an AVX2-only CPU, 10.7 -> 2-3.4 ms on an H200 (launches, not arithmetic).
            by_shape: dict[torch.Size, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(p.shape, []).append(i)
            for shape, members in by_shape.items():
                stack = torch.stack([updates[i] for i in members]) if len(members) > 1 else updates[members[0]]
                done = orthogonalise(stack, group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                done = done if len(members) > 1 else done.unsqueeze(0)  # a lone one: torch's 2-D products
                scale = -adjusted_lr(lr, group["adjust_lr_fn"], shape)
                for update, i in zip(done, members):
                    params[i].mul_(1 - lr * group["weight_decay"])
                    params[i].add_(update, alpha=scale)


class MuonWithAdamW:
    """Two optimisers behind one: param_groups (for the LR schedule), step, zero_grad, and a
    state_dict in torch's usual shape (the two concatenated), so checkpoints save it like any other."""

    def __init__(self, model: GPT, lr: float, weight_decay: float, betas: tuple[float, float], fused: bool,
                 ns_dtype: torch.dtype = torch.bfloat16):
        matrices = [p for name, p in model.named_parameters() if p.dim() == 2 and name.startswith("transformer.h.")]
        chosen = {id(p) for p in matrices}
        rest = [p for p in model.parameters() if id(p) not in chosen]
        self.muon = Muon(matrices, ns_dtype, lr=lr, weight_decay=weight_decay, momentum=0.95, nesterov=True,
                         adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(
            [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay},
             {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
            lr=lr, betas=betas, **({"fused": True} if fused else {}))

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.muon.param_groups + self.adamw.param_groups

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def _muon_count(self, groups: list[dict[str, Any]]) -> int:
        return sum(len(g["params"]) for g in groups[: len(self.muon.param_groups)])

    def state_dict(self) -> dict[str, Any]:
        a, b = self.muon.state_dict(), self.adamw.state_dict()
        n = self._muon_count(a["param_groups"])
        return {
            "state": {**a["state"], **{i + n: s for i, s in b["state"].items()}},
            "param_groups": a["param_groups"] + [{**g, "params": [i + n for i in g["params"]]} for g in b["param_groups"]],
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        groups, k = sd["param_groups"], len(self.muon.param_groups)
        if len(groups) != k + len(self.adamw.param_groups):
            raise ValueError("the saved optimiser has another number of parameter groups")
        n = self._muon_count(groups)
        self.muon.load_state_dict({"state": {i: s for i, s in sd["state"].items() if i < n}, "param_groups": groups[:k]})
        self.adamw.load_state_dict({
            "state": {i - n: s for i, s in sd["state"].items() if i >= n},
            "param_groups": [{**g, "params": [i - n for i in g["params"]]} for g in groups[k:]],
        })
