"""`repytilian eval`: loss, perplexity and bits per character of a model on text, over every window.

Windows of the model's full context slide over the ids with a stride (default half the context);
each token is scored exactly once, by the first window in which it is new, so after the first
window every prediction sees at least block_size - stride tokens of context. Bits per character
divide the total loss (in bits) by the number of characters of the text, which makes models with
different tokenizers comparable.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from .model import GPT
from .runtime.progress import progress as progress_bar


@dataclass
class EvalReport:
    tokens: int  # predictions scored (every id but the first)
    chars: int | None  # characters of the text, where it is text
    total_nats: float
    block_size: int
    stride: int

    @property
    def loss(self) -> float:
        return self.total_nats / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_char(self) -> float | None:
        return None if not self.chars else self.total_nats / self.chars / math.log(2)


def windows(n: int, block: int, stride: int):
    """(start, end, new): the model reads ids[start:end], predicts ids[start+1:end+1], and the last
    `new` of those predictions are scored (the targets not scored by an earlier window)."""
    end, scored = min(block, n - 1), 0
    while n > 1:
        yield max(0, end - block), end, end - scored
        scored = end
        if end >= n - 1:
            return
        end = min(end + stride, n - 1)


def count_windows(n: int, block: int, stride: int) -> int:
    if n <= 1:
        return 0
    first = min(block, n - 1)
    return 1 + -(-(n - 1 - first) // stride)


def _batches(plan, batch_size: int):
    """Runs of up to batch_size consecutive windows of the same length and number of new targets
    (the plan is read lazily: a large text's windows never sit in a list)."""
    group = []
    for w in plan:
        if group and (len(group) == batch_size or (w[1] - w[0], w[2]) != (group[0][1] - group[0][0], group[0][2])):
            yield group
            group = []
        group.append(w)
    if group:
        yield group


def count_chars(tokenizer, ids: np.ndarray, chunk: int = 1 << 20) -> int:
    """The characters of the text that `ids` decode to, decoded a chunk at a time (a chunk that ends
    inside a character, as a byte-level token can, is extended until the character is whole)."""
    total, i = 0, 0
    while i < len(ids):
        j = min(i + chunk, len(ids))
        text = tokenizer.decode(ids[i:j].tolist())
        while text.endswith("\ufffd") and j < len(ids) and j - i < chunk + 8:
            j += 1
            text = tokenizer.decode(ids[i:j].tolist())
        total += len(text)
        i = j
    return total


@torch.no_grad()
def evaluate(model: GPT, ids: np.ndarray, chars: int | None = None, stride: int | None = None,
             batch_size: int = 32, progress: bool = True, max_seconds: float | None = None,
             desc: str = "evaluating") -> EvalReport:
    """Every prediction of `ids` scored once; with `max_seconds`, the windows scored by then (the
    report's `tokens` says how many predictions that was: the first ones of the text)."""
    block = model.config.block_size
    stride = max(1, min(stride or block // 2, block))
    device = next(model.parameters()).device
    model.eval()
    total, scored = 0.0, 0
    started = time.perf_counter()
    with progress_bar(count_windows(len(ids), block, stride), "window", desc, enabled=progress,
                      every=10.0, delay=3.0, leave=False) as bar:
        for group in _batches(windows(len(ids), block, stride), batch_size):
            new = group[0][2]
            x = torch.from_numpy(np.stack([ids[s:e] for s, e, _ in group]).astype(np.int64)).to(device)
            y = torch.from_numpy(np.stack([ids[s + 1:e + 1] for s, e, _ in group]).astype(np.int64)).to(device)
            logits, _ = model(x)
            logits, y = logits[:, -new:, :], y[:, -new:]
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), reduction="sum").item()
            scored += y.numel()
            bar.update(len(group))
            if max_seconds is not None and time.perf_counter() - started > max_seconds:
                break
    return EvalReport(tokens=scored, chars=chars, total_nats=total, block_size=block, stride=stride)
