"""One generation request, token by token, with what the model thought of each token.

Runs in a worker thread (never on the event loop): `run_job` is a plain generator that the web
layer drains from a thread and hands over to the loop. It checks `cancelled()` before every
step, so a client that goes away, or a request over its time limit, stops costing compute at once.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from ..api import LanguageModel
from ..sampling import SamplingOptions, StopFilter, sample_steps
from ..tokenizers import Tokenizer
from ..tokenizers.json_tokens import display


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingOptions
    n: int = 1
    stop: list[str] = field(default_factory=list)
    alternatives: int = 0  # how many likeliest tokens to report for each generated one
    max_seconds: float = 60.0


@dataclass
class TokenOut:
    """A generated token: its id, the token alone (`label`), what it adds to the text (stop
    strings cut off, bytes of an unfinished character held back: may be ""), its log-probability
    under the model and the likeliest alternatives as (id, label, log-probability)."""

    choice: int
    id: int
    label: str
    text: str
    logprob: float
    top: list[tuple[int, str, float]]


@dataclass
class TextOut:
    """Text released at the end of a choice without a token of its own (held-back bytes)."""

    choice: int
    text: str


@dataclass
class ChoiceEnd:
    choice: int
    finish_reason: str  # "stop": an end token or a stop string; "length": max_tokens or the time limit
    tokens: int


def token_label(tokenizer: Tokenizer, token_id: int) -> str:
    """A token on its own, as a person would read it (a JSON value for JSON-token models)."""
    values = getattr(tokenizer, "values", None)
    if tokenizer.name == "json" and values is not None:
        if token_id == tokenizer.eos_id:
            return "(end)"
        return display(values[token_id])
    return tokenizer.decode([token_id])


def run_job(lm: LanguageModel, job: Job, cancelled: Callable[[], bool] = lambda: False
            ) -> Iterator[TokenOut | TextOut | ChoiceEnd]:
    tokenizer, n = lm.tokenizer, job.n
    decoders = [tokenizer.stream_decoder() for _ in range(n)]
    stops = [StopFilter(job.stop) for _ in range(n)]
    for d in decoders:
        d.head("", job.prompt_ids)  # JSON's decoder counts items; the prompt is not repeated
    finished: list[str | None] = [None] * n
    counts = [0] * n
    deadline = time.monotonic() + job.max_seconds
    eos = tokenizer.eos_id
    if job.max_tokens > 0 and not cancelled():
        for ids, logits in sample_steps(lm.model, job.prompt_ids, job.max_tokens, job.sampling, n):
            logp = torch.log_softmax(logits.float(), dim=-1)
            top = logp.topk(min(job.alternatives, logp.size(-1))) if job.alternatives else None
            for i, token in enumerate(ids.tolist()):
                if finished[i]:
                    continue
                if token == eos:
                    finished[i] = "stop"
                    yield from _end(i, decoders[i], stops[i], "stop", counts[i])
                    continue
                counts[i] += 1
                text = stops[i].push(decoders[i].push(token))
                alternatives = []
                if top is not None:
                    alternatives = [(int(t), token_label(tokenizer, int(t)), _finite(v))
                                    for v, t in zip(top.values[i].tolist(), top.indices[i].tolist())]
                yield TokenOut(i, token, token_label(tokenizer, token), text, _finite(logp[i, token].item()),
                               alternatives)
                if stops[i].stopped:
                    finished[i] = "stop"
                    yield ChoiceEnd(i, "stop", counts[i])
            if all(finished) or cancelled() or time.monotonic() > deadline:
                break
    for i in range(n):
        if not finished[i]:
            yield from _end(i, decoders[i], stops[i], "length", counts[i])


def _end(i: int, decoder, stops: StopFilter, reason: str, count: int) -> Iterator[TextOut | ChoiceEnd]:
    rest = stops.push(decoder.flush()) + stops.flush()
    if rest:
        yield TextOut(i, rest)
    yield ChoiceEnd(i, reason, count)


def _finite(value: float) -> float:
    """JSON has no -inf: a probability of exactly zero is reported as a very unlikely one."""
    return value if math.isfinite(value) else -9999.0
