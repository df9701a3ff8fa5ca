"""Sampling token ids from a model: temperature, top-k, top-p, seeds, a KV cache, batches of samples.

The sampler knows token ids, not text: the generation engine (engine.py) encodes, decodes and
stops; this module steps the model. `SamplingOptions` holds the one set of sampling defaults that
the command line, Python and the server all use.

The context window: the model sees at most block_size tokens. When the window is full, the
last KEEP_FRACTION of it is kept and re-encoded in one pass (with the cache, a "re-prefill"),
and generation continues from there. The path without a cache uses the same window, so both
give the same tokens (a test checks it for greedy decoding).
"""
from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .config import DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from .errors import RepytilianError, SettingError, check_type
from .model import GPT

KEEP_FRACTION = 0.5  # after a slide the model sees half a block, then a growing context; a re-prefill every block/2 tokens
MAX_NEW_TOKENS = 1_000_000
MAX_SAMPLES = 1024
SEEDS = (-(2 ** 63), 2 ** 64 - 1)  # what a torch.Generator takes


@dataclass
class SamplingOptions:
    """How the next token is chosen. The defaults (temperature 0.8, the 200 likeliest tokens, top-p
    off) are nanoGPT's sample.py's; a field left out anywhere (a flag, a keyword, a JSON field)
    takes them."""

    temperature: float = DEFAULT_TEMPERATURE  # 0 is greedy: always the likeliest token
    top_k: int | None = DEFAULT_TOP_K  # only the k likeliest tokens (None or 0: all, as in transformers)
    top_p: float = 1.0  # only the likeliest tokens whose probabilities add up to top_p (1: all)
    seed: int | None = None

    def __post_init__(self) -> None:
        # numpy's numbers as Python's (a seed of np.int64 failed deep inside); other types are validate's to refuse
        for name, kind, cast in (("temperature", numbers.Real, float), ("top_p", numbers.Real, float),
                                 ("top_k", numbers.Integral, int), ("seed", numbers.Integral, int)):
            value = getattr(self, name)
            if isinstance(value, kind) and not isinstance(value, bool):
                setattr(self, name, cast(value))

    def validate(self) -> None:
        for name in ("temperature", "top_p"):
            check_type(name, getattr(self, name), numbers.Real, "a number")
        for name in ("top_k", "seed"):
            if getattr(self, name) is not None:
                check_type(name, getattr(self, name), numbers.Integral, "a whole number")
        if not self.temperature >= 0:  # also catches NaN
            raise SettingError("temperature", f"must be 0 (greedy) or more, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise SettingError("top_k", f"must be 0 (off: every token) or more, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise SettingError("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not SEEDS[0] <= self.seed <= SEEDS[1]:
            raise SettingError("seed", f"must be a whole number from {SEEDS[0]:,} to {SEEDS[1]:,}, got {self.seed:,}")


def check_lengths(max_new_tokens: int, num_samples: int = 1) -> None:
    check_type("max_new_tokens", max_new_tokens, numbers.Integral, "a whole number")
    check_type("num_samples", num_samples, numbers.Integral, "a whole number")
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise RepytilianError(f"the number of tokens must be between 0 and {MAX_NEW_TOKENS:,}, got {max_new_tokens:,}")
    if not 1 <= num_samples <= MAX_SAMPLES:
        raise SettingError("num_samples", f"must be between 1 and {MAX_SAMPLES}, got {num_samples}")


def choose_next(logits: torch.Tensor, opts: SamplingOptions, generator: torch.Generator | None) -> torch.Tensor:
    """logits (B, vocab) -> next ids (B, 1)."""
    if opts.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    return draw(probabilities(logits, opts), generator)


def probabilities(logits: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """logits (B, vocab) -> what each token's chance is under temperature, top-k and top-p (B, vocab)."""
    logits = logits / opts.temperature
    if opts.top_k and opts.top_k < logits.size(-1):
        kth = torch.topk(logits, opts.top_k).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))  # -inf, never a small number
    probs = F.softmax(logits, dim=-1)
    if opts.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens before it already reach top_p; the likeliest always stays.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= opts.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return probs


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """probs (B, vocab) -> one id drawn per row (B, 1)."""
    return first_arrival(probs, arrival_noise(torch.empty_like(probs), generator))[:, None]


def arrival_noise(out: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """`out` filled with exponential waiting times from `generator` (what `first_arrival` takes)."""
    return out.exponential_(generator=generator)


def first_arrival(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """probs and noise (B, vocab) -> the drawn id of each row (B,).

    The exponential race: if each token waits an exponential time of rate p (noise / p), the first
    to arrive is token i with probability p_i / sum(p), which is a draw from the distribution. It
    is one division and one max for any number of rows, whatever generator each row's noise came
    from; torch.multinomial costs ~30 us a call here, and a batch of requests with their own seeds
    needed a call each (measured: 8 rows 42 us this way, 231 us with a call per row)."""
    # A wait of exactly 0 (it happens: 2^-24 a value) over a token left out (probability 0) is 0/0:
    # the smallest wait instead, so such a token is never drawn. `noise` is changed in place.
    best, ids = (probs / noise.clamp_(min=torch.finfo(noise.dtype).tiny)).max(dim=-1)
    if best.isnan().any():  # a NaN anywhere in a row wins the max (inf logits give NaN too)
        raise RepytilianError("the model produced invalid probabilities (NaN); its weights may be damaged")
    return ids


def sample_ids(
    model: GPT,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    opts: SamplingOptions | None = None,
    num_samples: int = 1,
    use_cache: bool = True,
    dtype: torch.dtype | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next ids of `num_samples` continuations of `prompt_ids`, one (B,) tensor per step.

    With the cache (decode.py), `dtype` None picks float32 or, where measured faster, bf16; the
    path without it runs the model itself in float32, the reference the cache is tested against.
    """
    for ids, _ in sample_steps(model, prompt_ids, max_new_tokens, opts, num_samples, use_cache, dtype):
        yield ids


def sample_steps(
    model: GPT,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    opts: SamplingOptions | None = None,
    num_samples: int = 1,
    use_cache: bool = True,
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """As `sample_ids`, with what the model thought at each step: (next ids (B,), logits (B, vocab)
    in float32, before temperature and filtering), for showing the probabilities it gave. One
    batch of the generation engine's (batching.py), with one group in it."""
    from .batching import Batch  # it builds on this module's sampling

    opts = opts or SamplingOptions()
    opts.validate()
    check_lengths(max_new_tokens, num_samples)
    if not prompt_ids:
        raise ValueError("sample_ids needs at least one prompt id (use the tokenizer's start ids)")
    batch = Batch(model, dtype, use_cache) if max_new_tokens else None
    if batch is not None:
        batch.add(prompt_ids, opts, num_samples)
    for _ in range(max_new_tokens):
        chosen = batch.step()
        yield (torch.tensor([token for _, token, _ in chosen], device=batch.device),
               batch.logits[[at for _, _, at in chosen]])
