"""The GPT of Karpathy's "Let's build GPT" lecture, written for reading.

The lecture builds it in steps; each lives here:
- the bigram model (a table of next-token scores): `transformer.wte`, read back through `lm_head`
  (tied to it: one matrix both ways), in `GPT.forward`; `--arch bigram` is that model alone (no
  blocks, no positions; wte and lm_head untied, so that their product is any table);
- one head of self-attention: one head's slice of `CausalSelfAttention.c_attn`'s queries, keys
  and values, and `attention.causal_attention` (softmax(q k^T / sqrt(hs)), the future masked);
- multi-head attention: the `view(B, T, 3, n_head, hs)` and `permute` in `CausalSelfAttention`
  (each head its own slice), then the heads side by side again and `c_proj`;
- the feed-forward layer: `MLP` (4x wider, GELU);
- residual connections: the `x = x + ...` of `Block.forward`;
- LayerNorm: `Block.ln_1`, `Block.ln_2` (before each branch: pre-norm) and `transformer.ln_f`;
- dropout: `transformer.drop`, the attention weights, `resid_dropout`, `MLP.dropout`;
- the steps in between (`--arch one-head`, `multi-head`, `feed-forward`, `blocks`; config.py's
  LECTURE_STEPS) switch parts off: `ModelConfig.residual`, `.mlp`, `norm="none"`;
- positions: `transformer.wpe`, a learned embedding per position, added to the tokens'.

Notable choices: nanoGPT's names and initialisation (normal 0.02, residual projections scaled by
1/sqrt(2 * n_layer)); weight tying; attention through attention.py, which picks PyTorch's fused
kernel or the written-out form, whichever is faster where it runs. Opt-in refinements of later
GPTs (`--arch modern`, or one at a time with --set): rotary positions, RMSNorm, ReLU^2 or SwiGLU
MLPs, QK-norm, value embeddings, an untied output head.

This module knows nothing of files, tokenizers, devices or number formats: it maps token ids to
logits. Generation passes a `KVCache` (attention.py) so that each step feeds only the new token;
decode.py holds that cache and the ways decoding is made fast on a CPU, from outside the model.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from .attention import KVCache, causal_attention
from .config import ACTIVATION_NAMES, RMS_EPS, ROPE_THETA, ModelConfig  # noqa: F401 (ModelConfig: for importers)
from .dropout import Dropout


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


class _ReluFromOutput(torch.autograd.Function):
    """ReLU whose backward reads the sign of its output (which the next layer keeps anyway)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clamp_min(0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * torch.sign(y)  # 1 where y > 0, else 0: no boolean mask


def relu(x: torch.Tensor) -> torch.Tensor:
    """F.relu; in a compiled training step, the same function with a backward that needs no boolean
    mask. Inductor's own keeps one for the backward, and its CPU code writes boolean masks slowly:
    a compiled `tiny` step with ReLU took 31.7 ms in float32 against 20.0 this way, 20.9 against 11.8
    in bf16 (2-core Xeon, 2026-12-04)."""
    if torch.compiler.is_compiling() and x.requires_grad:
        return _ReluFromOutput.apply(x)
    return F.relu(x)


# MLP activations; "swiglu" is gated (silu(x W_gate) * x W_up, as in Llama) and handled in MLP.
def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU's tanh approximation, which OpenAI's GPT-2 was trained with (transformers' gelu_new)."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {"gelu": F.gelu, "relu": relu, "relu2": relu_squared, "swiglu": F.silu, "gelu_tanh": gelu_tanh}
assert tuple(ACTIVATIONS) == ACTIVATION_NAMES  # config.py lists them without importing torch


def make_norm(config: ModelConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=RMS_EPS)
    if config.norm == "none":  # the lecture's steps before LayerNorm
        return nn.Identity()
    return nn.LayerNorm(dim, bias=config.bias)


def rope_tables(block_size: int, head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (block_size, head_size) of rotary embeddings, in Llama's layout: the head's
    first and second halves are the two coordinates of each rotated pair."""
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)  # (T, hs/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, hs)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., T, hs) rotated by position: each pair (x_i, x_{i+hs/2}) turns by its angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def at_positions(table: torch.Tensor, start: int | torch.Tensor, T: int, heads: bool = False) -> torch.Tensor:
    """The rows of a per-position table for positions start..start+T-1: (T, d), or (B, T, d) when
    each sequence starts at its own position (`start` a (B, 1) tensor; (B, 1, T, d) with `heads`)."""
    if isinstance(start, int):
        return table[start:start + T]
    rows = table[start + torch.arange(T, device=table.device)]
    return rows[:, None] if heads else rows


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        self.layer = layer  # its slot in a KV cache
        # query, key and value for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.attention_p
        hs = config.n_embd // config.n_head
        self.q_norm = nn.RMSNorm(hs, eps=RMS_EPS) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(hs, eps=RMS_EPS) if config.qk_norm else None
        # how much of the tokens' value embeddings this layer adds to its values (GPT.forward looks them up)
        self.ve_gate = nn.Parameter(torch.ones(1)) if config.value_embeddings else None

    def heads(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
              ve: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each head's queries, keys and values of x (B, T, C): its own hs-wide slice, (B, nh, T, hs)
        each; `ve` (B, T, C), the tokens' value embeddings, is added to the values."""
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if ve is not None:
            v = v + self.ve_gate * ve.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.q_norm is not None:  # in the norm's own format: bf16 under autocast would miss torch's fused norm
            q, k = self.q_norm(q.to(self.q_norm.weight.dtype)), self.k_norm(k.to(self.k_norm.weight.dtype))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, ve: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.heads(x, rope, ve)
        if cache is None:
            y = causal_attention(q, k, v, self.dropout if self.training else 0.0)  # (B, nh, T, hs)
        else:  # the positions seen before, kept in the cache, are attended to as well
            y = cache.attend(self.layer, q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        hidden = config.mlp_hidden
        self.gated = config.activation == "swiglu"  # c_fc then holds the gate and the up projection
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.gated else hidden, bias=config.bias)
        self.activation = ACTIVATIONS[config.activation]
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.activation(gate) * up
        else:
            h = self.activation(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Communication (attention) then computation (MLP), each on a normalised residual branch."""

    def __init__(self, config: ModelConfig, layer: int = 0):
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config, config.n_embd)
        self.mlp = MLP(config) if config.mlp else None
        self.residual = config.residual

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: KVCache | None = None, ve: torch.Tensor | None = None) -> torch.Tensor:
        if not self.residual:  # the lecture's steps before residual connections: each layer replaces x
            x = self.attn(self.ln_1(x), rope, cache, ve)
            return x if self.mlp is None else self.mlp(self.ln_2(x))
        x = x + self.attn(self.ln_1(x), rope, cache, ve)
        if self.mlp is not None:
            x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        parts = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=make_norm(config, config.n_embd),
        )
        if config.position == "learned":
            parts["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        elif config.position == "rope":  # computed, not learned: not saved with the weights
            cos, sin = rope_tables(config.block_size, config.n_embd // config.n_head)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if config.value_embeddings:
            parts["vte"] = nn.Embedding(config.vocab_size, config.n_embd)
        self.transformer = nn.ModuleDict(parts)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.head_bias)
        if config.tie_embeddings:
            # Weight tying: the same matrix maps ids to vectors and vectors back to id scores,
            # which saves vocab_size * n_embd parameters and helps small models generalise.
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # Residual projections add into the stream once per layer; scaling their init keeps
        # the stream's variance from growing with depth (GPT-2 paper).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @torch.no_grad()
    def grow_vocabulary(self, vocab_size: int) -> None:
        """Room for tokens added to the tokenizer (a chat's special tokens): new rows after the old
        ones, each the mean of the old rows, so a new token starts as an average token would."""
        old, c = self.config.vocab_size, self.config
        if vocab_size <= old:
            return
        head = self.lm_head
        grown = nn.Linear(c.n_embd, vocab_size, bias=head.bias is not None).to(head.weight)
        grown.weight[:old], grown.weight[old:] = head.weight, head.weight.mean(0)
        if head.bias is not None:
            grown.bias[:old], grown.bias[old:] = head.bias, head.bias.mean()
        self.lm_head = grown
        if c.tie_embeddings:
            self.transformer.wte.weight = grown.weight
        for name in ("wte", "vte"):  # the token tables the head does not already hold
            if name not in self.transformer or (name == "wte" and c.tie_embeddings):
                continue
            table = self.transformer[name].weight
            grown_table = nn.Embedding(vocab_size, c.n_embd).to(table)
            grown_table.weight[:old], grown_table.weight[old:] = table, table.mean(0)
            self.transformer[name] = grown_table
        c.vocab_size = vocab_size

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count (shared matrices once); position embeddings are left out by default, as GPT-2 counts."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, last_only: bool = False,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids -> logits (B, T, vocab); with targets (B, T) also the mean cross-entropy.

        `last_only` computes logits for the last position alone (all that sampling needs).
        With a `cache` (see `new_cache`), idx are the tokens after the cached ones.
        """
        B, T = idx.size()
        start = 0
        if cache is not None:
            cache.check_room(T)
            start = cache.start  # an int, or each row's own (B, 1) when the rows differ
        elif T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.position == "learned":  # the embeddings of positions start..start+T-1
            x = x + at_positions(self.transformer.wpe.weight, start, T)
        elif self.config.position == "rope":
            rope = (at_positions(self.rope_cos, start, T, heads=True), at_positions(self.rope_sin, start, T, heads=True))
        x = self.transformer.drop(x)
        ve = self.transformer.vte(idx) if self.config.value_embeddings else None
        for block in self.transformer.h:
            x = block(x, rope, cache, ve)
        if cache is not None:
            cache.advance(T)
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    def new_cache(self, batch_size: int = 1) -> KVCache:
        """An empty KV cache for decoding `batch_size` sequences of up to block_size tokens."""
        c = self.config
        return KVCache(c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head,
                       self.lm_head.weight.device)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Decay the 2-D weights (matmuls, embeddings); never biases or LayerNorm gains."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
