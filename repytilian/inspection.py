"""Looking inside a model: where its heads attend, how its prediction firms up block by block (the
logit lens), what its embeddings learned, and where a text surprises it.

Torch in, plain numbers out (numpy arrays and lists): no HTTP, no plotting; the server and the
command line both draw from these. Every view runs the model once, in eval mode, on at most one
context of tokens (`check_length`), and reads what it needs through forward hooks: the model's
code is the one that runs, so what is shown is what the model computes.
- `attention`: every layer's and head's weights, softmax(q k^T / sqrt(hs)) with the future masked,
  from the queries and keys the model makes (`CausalSelfAttention.heads`); each row sums to 1.
- `logit_lens`: the residual stream after the embeddings and after each block, read through the
  final norm and the head as if the model ended there; the last row is the model's own output.
- `embeddings`: token (and learned position) embeddings projected on their two main axes (PCA).
- `surprise`: each next token's loss in bits under the model; `compare` the same for two models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .engine import token_label
from .errors import RepytilianError
from .model import GPT
from .tokenizers import Tokenizer


@dataclass
class Attention:
    tokens: list[str]
    weights: np.ndarray  # (layers, heads, T, T): row t is how position t spreads its attention over 0..t


@dataclass
class Lens:
    tokens: list[str]
    stages: list[str]  # "embeddings", "block 1", ..., the last block's is the model's output
    top: list[list[list[tuple[str, float]]]]  # [stage][position] -> the likeliest next tokens and their probabilities


@dataclass
class Embeddings:
    labels: list[str]
    tokens: np.ndarray  # (vocab, 2)
    positions: np.ndarray | None  # (block, 2) for learned positions, else None
    explained: list[float]  # the share of the tokens' variance each axis holds


@dataclass
class Surprise:
    tokens: list[str]
    bits: np.ndarray  # (T - 1,): -log2 p(token t | tokens before it), for t = 1..T-1

    @property
    def mean(self) -> float:
        return float(self.bits.mean()) if self.bits.size else 0.0


def token_ids(model: GPT, tokenizer: Tokenizer, ids: list[int] | str) -> list[int]:
    """The ids to look at: given, or a text's (a Python caller's string was "too many dimensions 'str'"),
    within the model's context."""
    ids = tokenizer.encode(ids) if isinstance(ids, str) else [int(i) for i in ids]
    check_length(model, ids)
    return ids


def check_length(model: GPT, ids: list[int]) -> None:
    if not ids:
        raise RepytilianError("the text has no tokens: give it some")
    if len(ids) > model.config.block_size:
        raise RepytilianError(f"the text is {len(ids)} tokens; this model sees at most {model.config.block_size} "
                              "at once: give a shorter one")


def labels(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    return [token_label(tokenizer, i) for i in ids]


@torch.no_grad()
def attention(model: GPT, tokenizer: Tokenizer, ids: list[int] | str) -> Attention:
    ids = token_ids(model, tokenizer, ids)
    if model.config.n_layer == 0:
        raise RepytilianError("this model has no attention: it is the bigram table, each token read on its own")
    captured: list[torch.Tensor] = []

    def record(module, args, output):  # args: the block's normalised x, then the rotary tables
        q, k, _ = module.heads(args[0], args[1] if len(args) > 1 else None)
        T = q.size(-2)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
        captured.append(scores.masked_fill(future, float("-inf")).softmax(dim=-1)[0].float())

    _run_with_hooks(model, ids, [(block.attn, record) for block in model.transformer.h])
    return Attention(labels(tokenizer, ids), torch.stack(captured).cpu().numpy())


@torch.no_grad()
def logit_lens(model: GPT, tokenizer: Tokenizer, ids: list[int] | str, top: int = 5) -> Lens:
    ids = token_ids(model, tokenizer, ids)
    streams: list[torch.Tensor] = []
    hooks = [(model.transformer.drop, lambda m, a, out: streams.append(out))]  # the embeddings, as the blocks get them
    hooks += [(block, lambda m, a, out: streams.append(out)) for block in model.transformer.h]
    _run_with_hooks(model, ids, hooks)
    stages = ["embeddings"] + [f"block {i + 1}" for i in range(len(streams) - 1)]
    k = min(top, model.config.vocab_size)
    table = []
    for stream in streams:
        probs = model.lm_head(model.transformer.ln_f(stream))[0].float().softmax(dim=-1)  # (T, vocab)
        best = probs.topk(k, dim=-1)
        table.append([[(token_label(tokenizer, t), p) for t, p in zip(ts, ps)]
                      for ts, ps in zip(best.indices.tolist(), best.values.tolist())])
    return Lens(labels(tokenizer, ids), stages, table)


@torch.no_grad()
def embeddings(model: GPT, tokenizer: Tokenizer) -> Embeddings:
    wte = model.transformer.wte.weight.float()
    centred = wte - wte.mean(dim=0)
    _, s, v = torch.linalg.svd(centred, full_matrices=False)
    axes = v[:2].T  # (C, 2): the two directions of most variance
    variance = s.square()
    explained = (variance[:2] / variance.sum()).tolist() if variance.sum() > 0 else [0.0, 0.0]
    positions = None
    if "wpe" in model.transformer:
        wpe = model.transformer.wpe.weight.float()
        positions = ((wpe - wte.mean(dim=0)) @ axes).cpu().numpy()
    return Embeddings(labels(tokenizer, list(range(model.config.vocab_size))), (centred @ axes).cpu().numpy(),
                      positions, explained)


@torch.no_grad()
def surprise(model: GPT, tokenizer: Tokenizer, ids: list[int] | str) -> Surprise:
    ids = token_ids(model, tokenizer, ids)
    model.eval()
    logits, _ = model(torch.tensor([ids], device=model.lm_head.weight.device))
    logp = logits[0, :-1].float().log_softmax(dim=-1)  # what position t predicts for t + 1
    nats = -logp.gather(1, torch.tensor(ids[1:], device=logp.device)[:, None])[:, 0]
    return Surprise(labels(tokenizer, ids), (nats / math.log(2)).cpu().numpy())


def compare(a: tuple[GPT, Tokenizer], b: tuple[GPT, Tokenizer], text: str) -> tuple[Surprise, Surprise, np.ndarray]:
    """The surprise of one text under two models with one tokenizer, and b's bits minus a's."""
    (model_a, tok_a), (model_b, tok_b) = a, b
    check_same_tokenizer(tok_a, tok_b)
    ids = tok_a.encode(text)
    first, second = surprise(model_a, tok_a, ids), surprise(model_b, tok_b, ids)
    return first, second, second.bits - first.bits


def check_same_tokenizer(a: Tokenizer, b: Tokenizer) -> None:
    if a.to_dict() != b.to_dict():
        raise RepytilianError("the two models have different tokenizers: their surprise per token cannot be "
                              "compared token by token")


def _run_with_hooks(model: GPT, ids: list[int], hooks: list) -> None:
    model.eval()
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        model(torch.tensor([ids], device=model.lm_head.weight.device))
    finally:
        for handle in handles:
            handle.remove()
