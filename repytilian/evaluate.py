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

from .data.conversations import IGNORED, ChatExamples
from .events import ProgressTracker
from .model import GPT

# The loss after training covers the whole validation split up to this many tokens: enough for
# a figure to 3 decimals, and minutes rather than hours on a CPU for a corpus of gigabytes. A
# shorter run evaluates on as many tokens as it trained on (at least FINAL_VAL_MIN_TOKENS), for at
# most FINAL_VAL_TIME_SHARE of its training time (at least FINAL_VAL_MIN_SECONDS): `-i quick` "to
# see that it works" must not then wait minutes for a 50k-word softmax over a large split.
FINAL_VAL_MAX_TOKENS = 1_000_000
FINAL_VAL_MIN_TOKENS = 65_536
FINAL_VAL_TIME_SHARE = 0.25
FINAL_VAL_MIN_SECONDS = 10.0


@dataclass
class EvalReport:
    tokens: int  # predictions scored (every id but the first)
    chars: int | None  # characters of the text, where it is text
    total_nats: float
    block_size: int
    stride: int
    scope: str = ""  # what was scored, in words ("the validation split of ...")
    text_bytes: int | None = None  # bytes of the text in UTF-8, where it is text

    @property
    def bits_per_byte(self) -> float | None:
        """The loss on one scale for every tokenizer: bits per byte of the text (as nanochat reports)."""
        return None if not self.text_bytes else self.total_nats / self.text_bytes / math.log(2)

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
    """The characters of the text that `ids` decode to (text_size's first figure)."""
    return text_size(tokenizer, ids, chunk)[0]


def text_size(tokenizer, ids: np.ndarray, chunk: int = 1 << 20) -> tuple[int, int]:
    """The characters and the UTF-8 bytes of the text that `ids` decode to, decoded a chunk at a time
    (a chunk that ends inside a character, as a byte-level token can, is extended until it is whole)."""
    total, size, i = 0, 0, 0
    while i < len(ids):
        j = min(i + chunk, len(ids))
        text = tokenizer.decode(ids[i:j].tolist())
        while text.endswith("\ufffd") and j < len(ids) and j - i < chunk + 8:
            j += 1
            text = tokenizer.decode(ids[i:j].tolist())
        total += len(text)
        size += len(text.encode("utf-8"))
        i = j
    return total, size


def val_bits_per_byte(tokenizer, val: np.ndarray, scored: int, loss: float) -> float | None:
    """Bits per byte of a loss over the first `scored` predictions of `val` (the targets
    val[1:scored + 1]); None where the tokens are not text."""
    if tokenizer.input_format != "text" or isinstance(val, ChatExamples) or scored < 1:
        return None
    _, size = text_size(tokenizer, np.asarray(val[1: scored + 1]))
    return loss * scored / size / math.log(2) if size else None


@torch.no_grad()
def evaluate(model: GPT, ids: np.ndarray, chars: int | None = None, stride: int | None = None,
             batch_size: int = 32, progress: bool = True, max_seconds: float | None = None,
             desc: str = "evaluating", text_bytes: int | None = None) -> EvalReport:
    """Every prediction of `ids` scored once; with `max_seconds`, the windows scored by then (the
    report's `tokens` says how many predictions that was: the first ones of the text)."""
    block = model.config.block_size
    stride = max(1, min(stride or block // 2, block))
    device = next(model.parameters()).device
    model.eval()
    total, scored = 0.0, 0
    started = time.perf_counter()
    with ProgressTracker(desc, "window", count_windows(len(ids), block, stride), enabled=progress) as bar:
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
    return EvalReport(tokens=scored, chars=chars, total_nats=total, block_size=block, stride=stride,
                      text_bytes=text_bytes)


def evaluate_model(lm, source=None, stride: int | None = None, progress: bool = False) -> EvalReport:
    """A `LanguageModel` scored on the text of `source` (a data.corpus.DataSource, or a file's or a
    folder's path), or, without one, on the validation split of the data it was trained on."""
    from .data.corpus import DataSource, TokenData, load_corpus
    from .data.textfiles import TextFiles

    tokenizer = lm.tokenizer
    if source is not None:
        source = DataSource.of(source)
        scope = source.describe()
        corpus = load_corpus(source, tokenizer.input_format)
        size = None
        if isinstance(corpus, TextFiles):
            ids, chars = TokenData.from_corpus(corpus, tokenizer, val_fraction=0).train, corpus.chars
            size = sum(len(piece.encode("utf-8")) for piece in corpus.pieces())
        elif isinstance(corpus, str):
            ids, chars, size = tokenizer.encode_array(corpus), len(corpus), len(corpus.encode("utf-8"))
        else:
            ids, chars = tokenizer.encode_sequences(corpus.train + (corpus.val or [])), None
    else:
        source = DataSource.from_dict(lm.meta.get("data", {}).get("source", {"kind": "dataset", "value": "shakespeare"}))
        scope = f"the validation split of {source.describe()}"
        ids = TokenData.from_corpus(load_corpus(source, tokenizer.input_format), tokenizer).val
        chars, size = text_size(tokenizer, ids) if tokenizer.input_format == "text" else (None, None)
    report = evaluate(lm.model, ids, chars, stride=stride, progress=progress, text_bytes=size)
    report.scope = scope
    return report


def final_val_tokens(tokens_seen: int) -> int:
    """The evaluation after training is proportional to the run: at least FINAL_VAL_MIN_TOKENS, as
    many as training saw, at most FINAL_VAL_MAX_TOKENS (a corpus of gigabytes has plenty)."""
    return min(FINAL_VAL_MAX_TOKENS, max(FINAL_VAL_MIN_TOKENS, tokens_seen))


def final_val_loss(model: GPT, val: np.ndarray | ChatExamples, tokens_seen: int, train_seconds: float,
                   batch_size: int, progress: bool = False) -> EvalReport:
    """The loss after training: non-overlapping windows of the context over the validation split, as
    far as `final_val_tokens` and a share of the training time (FINAL_VAL_TIME_SHARE) go; for a chat
    fine-tune, every answer of the validation conversations."""
    if isinstance(val, ChatExamples):
        return chat_loss(model, val, batch_size, progress)
    seconds = max(FINAL_VAL_MIN_SECONDS, FINAL_VAL_TIME_SHARE * train_seconds)
    block = model.config.block_size
    return evaluate(model, val[: final_val_tokens(tokens_seen) + 1], stride=block, batch_size=batch_size,
                    progress=progress, max_seconds=seconds, desc="final val loss")


@torch.no_grad()
def chat_loss(model: GPT, examples: ChatExamples, batch_size: int = 32, progress: bool = False) -> EvalReport:
    """The mean loss of the answers (the tokens a chat fine-tune learns) of every conversation."""
    device = next(model.parameters()).device
    block = model.config.block_size
    model.eval()
    total, scored = 0.0, 0
    order = np.arange(examples.conversations)
    with ProgressTracker("answers' loss", "conversation", len(order), enabled=progress) as bar:
        for start in range(0, len(order), batch_size):
            x, y = examples.rows(order[start: start + batch_size], block)
            logits, _ = model(x.to(device))
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.to(device).reshape(-1),
                                     ignore_index=IGNORED, reduction="sum").item()
            scored += int((y != IGNORED).sum())
            bar.update(len(x))
    return EvalReport(tokens=scored, chars=None, total_nats=total, block_size=block, stride=block,
                      scope=f"the answers of all {examples.conversations:,} validation conversations"
                      if examples.conversations > 1 else "the answers of the one validation conversation")


def final_val_scope(val_tokens: int, tokens_seen: int, scored: int | None = None) -> str:
    """What the loss after training covered, in words (`scored`: the predictions it scored)."""
    whole = max(val_tokens - 1, 0)
    if scored is None:
        scored = min(whole, final_val_tokens(tokens_seen))
    if scored >= whole:
        return "the whole validation split"
    # `scored` predictions read scored + 1 tokens: counted as the split's tokens are at the start
    return f"the first {scored + 1:,} of the validation split's {val_tokens:,} tokens"
