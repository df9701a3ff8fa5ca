"""The generation engine: a request in, one event per token out. Every surface that generates text
consumes it: `LanguageModel` (Python), `generate.py` and `repytilian generate`, `repytilian chat`,
the playground and both OpenAI routes of the server.

Its borders: it knows token ids, the model and the tokenizer, and nothing of HTTP, terminals or
files; it runs where it is called (the server's batch loop calls it from a thread of its own) and reports what
happens as events, never as printed words.

What a request gets, in order, for each of its samples: `Begun` (how the prompt is shown), then
a `Token` for every token the model generates (its id, the text it adds, its log-probability
and the likeliest alternatives when asked), then `Ended` with why it stopped (`END_REASONS`).
The sampling defaults are `SamplingOptions`'s (sampling.py), the same from every surface.

The samples of a request decode together, one batch row each (`_Row` holds a row's own state:
its text decoder, its stop strings, its count), and several requests with different prompts,
lengths and sampling share one batch in the same way (batching.py): `run_many` decodes a list of
requests together, and `start` / `step` let requests join a batch that is already running (the
server's continuous batching, batch_loop.py).
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .batching import Batch, Group
from .decode import Decoder, choose_dtype
from .decode_compiled import compiled_step
from .errors import SettingError
from .model import GPT
from .runtime.cpu import one_thread_off_the_main_thread
from .sampling import SamplingOptions, check_lengths
from .stops import StopFilter
from .tokenizers import Tokenizer
from .tokenizers.json_tokens import display
from .tokenizers.specials import never_sampled

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

    def take(self, token: int, logprob: float | None, top: list[Alternative]) -> Iterator[Event]:
        if token == self.tokenizer.eos_id:
            yield self.end(END_TOKEN)
            return
        self.count += 1
        text = self.stops.push(self.decoder.push(token))
        yield Token(self.sample, token, text, self.count, None if logprob is None else _finite(logprob), top,
                    self.tokenizer)
        if self.stops.stopped:
            yield self.end(STOP)

    @property
    def ended(self) -> bool:
        return self.ending is not None

    def end(self, reason: str) -> Ended:
        rest = self.stops.push(self.decoder.flush()) + self.stops.flush()
        self.ending = Ended(self.sample, reason, self.count, rest, self.decoder.close())
        return self.ending


class Job:
    """A request in a batch: its samples' rows, its group of sequences, its deadline."""

    def __init__(self, request: Request, rows: list[_Row], index: int = 0):
        self.request, self.rows, self.index = request, rows, index
        self.deadline = None if request.max_seconds is None else time.monotonic() + request.max_seconds
        self.want_logprobs = request.logprobs or request.alternatives > 0
        self.group: Group | None = None

    @property
    def done(self) -> bool:
        return all(row.ended for row in self.rows)


class Engine:
    """Generates for requests with one model and its tokenizer. Requests decode together in a
    `Batch` (batching.py): `run` one, `run_many` several, or `start` and `step` to let requests
    join a running batch (the server's batch loop, batch_loop.py). Holds no state between calls
    but decoders to reuse; threads may run calls at once."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, compile: bool | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.never = never_sampled(tokenizer)  # ids generation never chooses (a padded vocabulary's)
        self._decoders = DecoderPool(model, compile)

    @property
    def compile(self) -> bool | None:
        """Whether a single sequence's steps run through a step built ahead of time
        (decode_compiled.py): True builds it where this machine has none for the model yet (tens of
        seconds, once), None (the default) uses one only if already built, False never does."""
        return self._decoders.compile

    @compile.setter
    def compile(self, value: bool | None) -> None:
        self._decoders.compile = value

    @property
    def dtype(self) -> torch.dtype | None:
        """The decoding matrices' format for requests naming none (`serve --dtype`); None: the machine's."""
        return self._decoders.dtype

    @dtype.setter
    def dtype(self, value: torch.dtype | None) -> None:
        self._decoders.dtype = value

    def run(self, request: Request) -> Iterator[Event]:
        for _, event in self.run_many([request]):
            yield event

    def run_many(self, requests: Sequence[Request]) -> Iterator[tuple[int, Event]]:
        """The events of several requests decoding together, each with its request's index."""
        first = requests[0] if requests else Request([0])
        with one_thread_off_the_main_thread(), self.batch(first.dtype, first.use_cache) as batch:
            for index, request in enumerate(requests):
                _, begun = self.start(batch, request, index)
                yield from ((index, event) for event in begun)
            while batch:
                yield from ((job.index, event) for job, event in self.step(batch))

    def prepare(self, rows: bool = False) -> None:
        """Make a decoder now and keep it: with `compile`, its step is found or built before a
        request waits for it; with `rows` too, the step for several rows at once (a server's batches)."""
        with self.batch() as batch:
            if rows and batch.decoder is not None:
                batch.decoder.prepare_rows()

    @contextmanager
    def batch(self, dtype: torch.dtype | None = None, use_cache: bool = True) -> Iterator[Batch]:
        """A batch to add requests to (`start`) and `step`, with a decoder of this engine's to reuse."""
        never = self.never
        if not use_cache:
            yield Batch(self.model, use_cache=False, never=never)
            return
        decoder = self._decoders.take(dtype)
        try:
            yield Batch(self.model, decoder=decoder, never=never)
        finally:
            self._decoders.give_back(decoder)

    def start(self, batch: Batch, request: Request, index: int = 0) -> tuple[Job, list[Event]]:
        """The request joins the batch (from its next step); its Begun events (and Ended, for one
        that ends before its first token)."""
        request.validate()
        job = Job(request, [_Row(i, self.tokenizer, request.stop) for i in range(request.num_samples)], index)
        events: list[Event] = [Begun(row.sample, row.decoder.head(request.prompt_text, request.prompt_ids))
                               for row in job.rows]
        reason = _interrupted(job)
        if request.max_new_tokens == 0 or reason is not None:
            events += [row.end(reason or LENGTH) for row in job.rows]
        else:
            job.group = batch.add(request.prompt_ids, request.sampling, request.num_samples, job)
        return job, events

    def step(self, batch: Batch) -> list[tuple[Job, Event]]:
        """One token for every sequence in the batch (several, where its built step's loop takes
        them: `_steps_at_once`); the events of their requests."""
        out = self._steps_at_once(batch)
        if out is not None:
            return self._interruptions(batch, out)
        out = []
        chosen = batch.step()
        # the chosen tokens' log-probabilities, where a request asks: every row's at once, gathered
        # by the chosen ids as a tensor (indexing by Python lists cost ~10 us more a step)
        owners = [seq.group.owner for seq, _, _ in chosen]
        all_logp = batch.logits.log_softmax(dim=-1) if any(job.want_logprobs for job in owners) else None
        logprobs = all_logp.gather(1, batch.ids[:, None])[:, 0].tolist() if all_logp is not None else []
        for (seq, token, at), job in zip(chosen, owners):
            row = job.rows[seq.sample]
            logprob = logprobs[at] if job.want_logprobs else None
            top = self._alternatives(all_logp[at], job.request.alternatives) if job.request.alternatives > 0 else []
            out += [(job, event) for event in row.take(token, logprob, top)]
            if not row.ended and seq.steps >= job.request.max_new_tokens:
                out.append((job, row.end(LENGTH)))
            if row.ended:
                batch.drop(seq)
        return self._interruptions(batch, out)

    def _steps_at_once(self, batch: Batch) -> list[tuple[Job, Event]] | None:
        """Up to TOKENS_AT_ONCE steps of the batch through its built step's loop (Batch.steps_at_once:
        a shipped model's token alone in about half the time), their events in the order a step at
        a time gives them; or None where the loop does not take the batch. Tokens past a request's
        end (a stop string) are computed but never shown."""
        if not batch.built:
            return None
        seqs = list(batch.rows)
        jobs: list[Job] = [seq.group.owner for seq in seqs]
        if not seqs or any(job.request.alternatives > 0 for job in jobs):
            return None
        most = min(TOKENS_AT_ONCE, *(job.request.max_new_tokens - seq.steps for seq, job in zip(seqs, jobs)))
        made = batch.steps_at_once(most, self.tokenizer.eos_id, any(job.want_logprobs for job in jobs))
        if made is None:
            return None
        tokens, logprobs = made
        out: list[tuple[Job, Event]] = []
        for k, step in enumerate(tokens):
            for r, (seq, job) in enumerate(zip(seqs, jobs)):
                row = job.rows[seq.sample]
                if row.ended:
                    continue
                out += [(job, e) for e in row.take(step[r], logprobs[k][r] if job.want_logprobs else None, [])]
                if not row.ended and seq.steps - len(tokens) + k + 1 >= job.request.max_new_tokens:
                    out.append((job, row.end(LENGTH)))
        for seq, job in zip(seqs, jobs):
            if job.rows[seq.sample].ended:
                batch.drop(seq)
        return out

    def _interruptions(self, batch: Batch, out: list[tuple[Job, Event]]) -> list[tuple[Job, Event]]:
        """`out`, and the Ended events of the requests cancelled or past their deadline (they leave the batch)."""
        for group in list(batch.groups):
            job = group.owner
            reason = _interrupted(job)
            if reason is not None:
                for seq in group.live:
                    out.append((job, job.rows[seq.sample].end(reason)))
                    batch.drop(seq)
        return out

    def _alternatives(self, logp: torch.Tensor, k: int) -> list[Alternative]:
        if k <= 0:
            return []
        top = logp.topk(min(k, logp.size(-1)))
        return [Alternative(t, token_label(self.tokenizer, t), _finite(v))
                for v, t in zip(top.values.tolist(), top.indices.tolist())]


def _interrupted(job: Job) -> str | None:
    request = job.request
    if request.cancelled is not None and request.cancelled():
        return CANCELLED
    if job.deadline is not None and time.monotonic() > job.deadline:
        return DEADLINE
    return None


class DecoderPool:
    """Decoders of one model, kept between requests (making one costs tens of milliseconds) and
    made again when the model's weights have changed since (training in the same process)."""

    def __init__(self, model: GPT, compile: bool | None = None):
        self.model, self.compile = model, compile
        self.dtype: torch.dtype | None = None  # for requests that name no format (Engine.dtype)
        self._free: list[tuple[tuple, Decoder]] = []  # (the weights it was made from, a spare)
        self._lock = threading.Lock()

    def _weights(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.model.parameters())

    def take(self, dtype: torch.dtype | None) -> Decoder:
        dtype = self.dtype if dtype is None else dtype
        weights = self._weights()
        with self._lock:
            for i, (made_from, decoder) in enumerate(self._free):
                # made under the same setting for the same format asked (None: the default, not any)
                if made_from == weights and (decoder.compile_setting, decoder.dtype_asked) == (self.compile, dtype):
                    del self._free[i]
                    return decoder
        compile, asked = self.compile, dtype
        step = compiled_step(self.model, compile, dtype)
        if dtype is None:
            # The eager passes beside a built step (batches without a built batch step, long prompts)
            # take its format (float32 below 256 wide as eager decoding, bf16 from there where native;
            # an eager decoder alone times its own: decode.choose_dtype).
            dtype = step.dtype if step is not None else choose_dtype(self.model, 1)
        decoder = Decoder(self.model, 1, dtype, compiled=step)
        decoder.compile_setting, decoder.dtype_asked = compile, asked  # given again only for the same
        return decoder

    def give_back(self, decoder: Decoder) -> None:
        decoder.reset()
        with self._lock:
            self._free = [(self._weights(), decoder)] + self._free[:MAX_SPARE_DECODERS - 1]


MAX_SPARE_DECODERS = 2
TOKENS_AT_ONCE = 16  # through the decoding loop: an unseen stop string or a cancellation costs at most this many steps


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
