"""Sampling token ids from a model: temperature, top-k, a seedable generator, streaming as a Python iterator.

The sampler knows token ids, not text: callers encode the prompt and decode what it yields, so it
works the same from the CLI, a notebook or a server.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.nn import functional as F

from .errors import RepytilianError
from .model import GPT

DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 200


@torch.no_grad()
def sample_ids(
    model: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = DEFAULT_TEMPERATURE,
    top_k: int | None = DEFAULT_TOP_K,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield up to `max_new_tokens` new ids, one at a time, continuing `prompt_ids`."""
    if not prompt_ids:
        raise ValueError("sample_ids needs at least one prompt id (use the tokenizer's start ids)")
    if temperature < 0:
        raise RepytilianError(f"temperature must be 0 (greedy) or more, got {temperature}")
    model.eval()
    device = next(model.parameters()).device
    block = model.config.block_size
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)  # (1, T)
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block:])  # the model sees at most block_size tokens of context
        logits = logits[:, -1, :].float()  # (1, vocab)
        if temperature == 0:
            next_id = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))  # -inf, never a small number
            probs = F.softmax(logits, dim=-1)
            if not torch.isfinite(probs).all():
                raise RepytilianError("the model produced invalid probabilities (NaN); its weights may be damaged")
            next_id = torch.multinomial(probs, num_samples=1, generator=generator)  # (1, 1)
        idx = torch.cat((idx, next_id.to(idx.device)), dim=1)
        yield int(next_id)
