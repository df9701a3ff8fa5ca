"""The generation engine: a request in, one event per token out. Every surface that generates text
consumes it: `LanguageModel` (Python), `generate.py` and `repytilian generate`, `repytilian chat`,
the playground and both OpenAI routes of the server.

Its borders: it knows token ids, the model and the tokenizer, and nothing of HTTP, terminals or
files; it runs where it is called (the server calls it from a worker thread) and reports what
happens as events, never as printed words.

What a request gets, in order, for each of its samples: `Begun` (how the prompt is shown), then
a `Token` for every token the model generates (its id, the text it adds, its log-probability
and the likeliest alternatives when asked), then `Ended` with why it stopped (`END_REASONS`).
The sampling defaults are `SamplingOptions`'s (sampling.py), the same from every surface.

The samples of a request decode together, one batch row each (`_Row` holds a row's own state:
its text decoder, its stop strings, its count). Several requests with different prompts and
lengths will share one batch in the same way, a row each, once the model's cache keeps a length
per row (today the rows of one request share the prompt, so one length serves them all).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .errors import SettingError
from .model import GPT
from .sampling import SamplingOptions, check_lengths, sample_steps
from .stops import StopFilter
from .tokenizers import Tokenizer
from .tokenizers.json_tokens import display

LENGTH = "length"  # max_new_tokens were generated
STOP = "stop"  # a stop string appeared (it is not part of the text)
END_TOKEN = "end_token"  # the model generated the tokenizer's end-of-sequence token
DEADLINE = "deadline"  # max_seconds ran out
CANCELLED = "cancelled"  # the caller's `cancelled()` said so (a client that went away)
END_REASONS = (LENGTH, STOP, END_TOKEN, DEADLINE, CANCELLED)
NO_PROBABILITY = -9999.0  # a log-probability of exactly zero, as a number JSON can carry


@dataclass
class Request:
    """What to generate: `num_samples` continuations of `prompt_ids`, each ending at the first of
    `max_new_tokens`, a stop string, the end token, `max_seconds` or `cancelled()`."""

    prompt_ids: list[int]
    max_new_tokens: int = 500
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    num_samples: int = 1
    stop: Sequence[str] = ()
    logprobs: bool = False  # each token's log-probability under the model
    alternatives: int = 0  # how many likeliest tokens to report with each token (implies logprobs)
    max_seconds: float | None = None
    cancelled: Callable[[], bool] | None = None
    prompt_text: str = ""  # the text the prompt ids came from, for `Begun` ("" shows no prompt)
    use_cache: bool = True  # False recomputes the whole window for every token (the reference)
    dtype: torch.dtype | None = None  # of the cached decoder's matrices; None: measured (decode.py)

    def validate(self) -> None:
        self.sampling.validate()
        check_lengths(self.max_new_tokens, self.num_samples)
        if not self.prompt_ids:
            raise SettingError("prompt_ids", "needs at least one token (the tokenizer's start_ids() for no prompt)")
        if self.max_seconds is not None and not self.max_seconds > 0:
            raise SettingError("max_seconds", f"must be more than 0, got {self.max_seconds}")
        if self.alternatives < 0:
            raise SettingError("alternatives", f"must be 0 or more, got {self.alternatives}")


@dataclass
class Begun:
    sample: int
    text: str  # how the prompt is shown before the first token ("" or the prompt; JSON's "[" and items)


@dataclass
class Alternative:
    id: int
    label: str
    logprob: float


@dataclass
class Token:
    """A generated token: `text` is what it adds to the shown text (may be "": a stop string's
    possible start and the bytes of an unfinished character are held back)."""

    sample: int
    id: int
    text: str
    index: int  # 1 for the first generated token of its sample
    logprob: float | None
    top: list[Alternative]
    tokenizer: Tokenizer = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """The token on its own, as a person reads it."""
        return token_label(self.tokenizer, self.id)


@dataclass
class Ended:
    sample: int
    reason: str  # one of END_REASONS
    tokens: int  # generated tokens shown (the end token not counted)
    text: str  # held-back text released at the end
    close: str  # closing syntax after it (JSON's "]"), for display


Event = Begun | Token | Ended


def token_label(tokenizer: Tokenizer, token_id: int) -> str:
    """A token on its own, as a person would read it (a JSON value for JSON-token models)."""
    values = getattr(tokenizer, "values", None)
    if tokenizer.name == "json" and values is not None:
        return "(end)" if token_id == tokenizer.eos_id else display(values[token_id])
    return tokenizer.decode([token_id])


class _Row:
    """One sample's own state while its batch row decodes."""

    def __init__(self, sample: int, tokenizer: Tokenizer, stop: Sequence[str]):
        self.sample, self.tokenizer = sample, tokenizer
        self.decoder = tokenizer.stream_decoder()
        self.stops = StopFilter(stop)
        self.count = 0
        self.ending: Ended | None = None

    def take(self, token: int, logp: torch.Tensor | None, top: list[Alternative]) -> Iterator[Event]:
        if token == self.tokenizer.eos_id:
            yield self.end(END_TOKEN)
            return
        self.count += 1
        text = self.stops.push(self.decoder.push(token))
        logprob = None if logp is None else _finite(logp[token].item())
        yield Token(self.sample, token, text, self.count, logprob, top, self.tokenizer)
        if self.stops.stopped:
            yield self.end(STOP)

    @property
    def ended(self) -> bool:
        return self.ending is not None

    def end(self, reason: str) -> Ended:
        rest = self.stops.push(self.decoder.flush()) + self.stops.flush()
        self.ending = Ended(self.sample, reason, self.count, rest, self.decoder.close())
        return self.ending


class Engine:
    """Generates for requests with one model and its tokenizer. Holds no state between requests:
    a thread may run one request while another thread runs another."""

    def __init__(self, model: GPT, tokenizer: Tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def run(self, request: Request) -> Iterator[Event]:
        request.validate()
        rows = [_Row(i, self.tokenizer, request.stop) for i in range(request.num_samples)]
        for row in rows:
            yield Begun(row.sample, row.decoder.head(request.prompt_text, request.prompt_ids))
        reason = self._interrupted(request, None)
        if request.max_new_tokens > 0 and reason is None:
            reason = yield from self._decode(request, rows)
        for row in rows:
            if not row.ended:
                yield row.end(reason or LENGTH)

    def _decode(self, request: Request, rows: list[_Row]) -> Iterator[Event]:
        """Steps until every row has ended; the reason for those still going (None: their length)."""
        deadline = None if request.max_seconds is None else time.monotonic() + request.max_seconds
        want_logprobs = request.logprobs or request.alternatives > 0
        steps = sample_steps(self.model, request.prompt_ids, request.max_new_tokens, request.sampling,
                             request.num_samples, request.use_cache, request.dtype)
        for ids, logits in steps:
            logp = torch.log_softmax(logits.float(), dim=-1) if want_logprobs else None
            for i, (row, token) in enumerate(zip(rows, ids.tolist())):
                if not row.ended:
                    yield from row.take(token, None if logp is None else logp[i],
                                        self._alternatives(logp[i], request.alternatives) if logp is not None else [])
            if all(row.ended for row in rows):
                return None
            reason = self._interrupted(request, deadline)
            if reason is not None:
                return reason
        return None

    def _alternatives(self, logp: torch.Tensor, k: int) -> list[Alternative]:
        if k <= 0:
            return []
        top = logp.topk(min(k, logp.size(-1)))
        return [Alternative(t, token_label(self.tokenizer, t), _finite(v))
                for v, t in zip(top.values.tolist(), top.indices.tolist())]

    @staticmethod
    def _interrupted(request: Request, deadline: float | None) -> str | None:
        if request.cancelled is not None and request.cancelled():
            return CANCELLED
        if deadline is not None and time.monotonic() > deadline:
            return DEADLINE
        return None


def shown_text(tokenizer: Tokenizer, prompt_text: str, prompt_ids: list[int], ids: Sequence[int],
               stop: Sequence[str] = ()) -> str:
    """The whole display text (Begun's, the tokens', Ended's) of a sample whose new ids are `ids`, as
    the events of a request would show it: the same rules, replayed without the model."""
    row = _Row(0, tokenizer, stop)
    parts = [row.decoder.head(prompt_text, prompt_ids)]
    for token in ids:
        parts += [event.text for event in row.take(token, None, []) if isinstance(event, Token)]
        if row.ended:
            break
    if not row.ended:
        row.end(LENGTH)
    parts.append(row.ending.text + row.ending.close)
    return "".join(parts)


def _finite(value: float) -> float:
    """JSON has no -inf: a probability of exactly zero is reported as a very unlikely one."""
    return value if math.isfinite(value) else NO_PROBABILITY
