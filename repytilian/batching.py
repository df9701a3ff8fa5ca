"""Sequences that decode together, one batch row each, whatever their prompts, lengths and sampling.

The generation engine (engine.py) adds the samples of a request as a `Group` and calls `step`:
each step gives every sequence still in the batch its next token, from one model call for all of
them. A group may join between any two steps (continuous batching: the server's requests join
the running batch instead of waiting for it to end) and a sequence leaves when the engine says
it has ended (`drop`), freeing its row for the next.

How a step stays one model call: every sequence in the batch has exactly one token the model has
not seen yet (its last). A group joining is prefilled with its prompt but for that last token
(one model call per group: its samples share the prompt, copied row to row), and so is a
sequence whose window just filled up (its last KEEP_FRACTION, sampling.py). Then one call feeds
every sequence its last token, each at its own position (the cache keeps a length per row).

A seeded request's sequences draw their tokens each from a random generator of its own (the first
seeded by the request, the others by seeds made from it: `sample_seed`): a seeded request gives the
same tokens alone or in a batch, a step at a time or several (decode_loop.py), whichever of its
samples end first, as long as the model gives the same numbers for a row whatever else is in the batch.

Without the cache (`use_cache=False`) each group's window is run through the model whole at every
step: the reference the cached path is tested against.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import decode_loop
from .decode import Decoder, choose_dtype
from .model import GPT
from .sampling import (
    KEEP_FRACTION,
    SamplingOptions,
    arrival_noise,
    first_arrival,
    probabilities,
)


def sample_seed(seed: int, sample: int) -> int:
    """The seed of a seeded request's sample: the request's own for the first, one made from it for
    each other (spread over 64 bits, as torch.Generator takes them)."""
    return seed if sample == 0 else (seed + sample * 0x9E3779B97F4A7C15) % (1 << 64)


@dataclass
class Seq:
    """One sample's place in the batch: its window (the tokens the model sees; the last one is
    not in the cache yet), its row, and how many tokens it has been given."""

    group: Group
    sample: int
    tokens: list[int]
    row: int = -1
    steps: int = 0
    generator: torch.Generator | None = None  # a seeded request's: this sample's own


@dataclass
class Group:
    """The samples of one request: one prompt, one way of sampling."""

    prompt_ids: list[int]
    sampling: SamplingOptions
    num_samples: int = 1
    owner: Any = None  # the engine's own record of the request
    seqs: list[Seq] = field(default_factory=list)
    fresh: bool = True  # not prefilled yet

    @property
    def live(self) -> list[Seq]:
        return [s for s in self.seqs if s.row >= 0]


class Batch:
    """The sequences decoding together with one model (see the module's docstring)."""

    def __init__(self, model: GPT, dtype: torch.dtype | None = None, use_cache: bool = True,
                 decoder: Decoder | None = None, never: Sequence[int] = ()):
        model.eval()
        self.model = model
        self.block = model.config.block_size
        self.keep = max(1, int(self.block * KEEP_FRACTION))
        self.device = model.lm_head.weight.device
        # ids no sequence may draw (a padded vocabulary's rows), made a tensor once, not every step
        self.never = torch.tensor(list(never), dtype=torch.long, device=self.device) if never else None
        self.never_flags = None  # the same as a flag a vocabulary id (uint8), for the decoding loop
        if self.never is not None:
            self.never_flags = torch.zeros(model.config.vocab_size, dtype=torch.uint8).index_fill_(0, self.never.cpu(), 1)
        self.use_cache = use_cache
        self.decoder = decoder
        if use_cache and decoder is None:
            self.decoder = Decoder(model, 1, dtype or choose_dtype(model, 1))
        self.rows: list[Seq] = []  # rows[i].row == i: the live sequences, in their cache rows
        self.groups: list[Group] = []
        self.logits = torch.empty(0)  # the last step's, a row per sequence (float32, before sampling)
        self.ids = torch.empty(0, dtype=torch.long)  # the last step's chosen ids, a row per sequence
        self._one = torch.zeros(1, 1, dtype=torch.long, device=self.device)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def built(self) -> bool:
        """Whether the batch decodes through a built step (decode_compiled.py), which may take it
        several steps a call (`steps_at_once`)."""
        return self.use_cache and self.decoder is not None and self.decoder.compiled is not None

    def add(self, prompt_ids: Sequence[int], sampling: SamplingOptions, num_samples: int = 1,
            owner: Any = None) -> Group:
        """A group of `num_samples` sequences continuing `prompt_ids`; they get tokens from the next step."""
        if not prompt_ids:
            raise ValueError("a prompt needs at least one token (the tokenizer's start ids)")
        group = Group(list(prompt_ids)[-self.block:], sampling, num_samples, owner)
        for sample in range(num_samples):
            seq = Seq(group, sample, list(group.prompt_ids), len(self.rows))
            if sampling.seed is not None:
                seq.generator = torch.Generator(device=self.device).manual_seed(sample_seed(sampling.seed, sample))
            group.seqs.append(seq)
            self.rows.append(seq)
        self.groups.append(group)
        return group

    def drop(self, seq: Seq) -> None:
        """The sequence has ended: its row goes to the last row's sequence (the cache rows stay packed)."""
        if seq.row < 0:
            return
        last = self.rows.pop()
        if last is not seq:
            if self.decoder is not None:
                self.decoder.cache.copy_row(last.row, seq.row)
            last.row = seq.row
            self.rows[seq.row] = last
        seq.row = -1
        if not seq.group.live:
            self.groups.remove(seq.group)

    @torch.no_grad()
    def step(self) -> list[tuple[Seq, int, int]]:
        """The next token of every live sequence: (sequence, token, its row in `self.logits`: the
        float32 logits it was drawn from)."""
        if not self.rows:
            return []
        self.logits = logits = self._logits_cached() if self.use_cache else self._logits_uncached()
        if self.never is not None:  # out of place: the decoder's logits may be inference tensors
            self.logits = logits = logits.index_fill(1, self.never, float("-inf"))
        sampled = [group for group in self.groups if group.sampling.temperature > 0]
        if sampled and logits.device.type == "cpu" and decode_loop.available():  # (greedy: torch's argmax, as there)
            return self._chosen_natively(logits, sampled)
        # Groups that sample alike share one pass over their rows (one softmax, one top-k); each row
        # then draws from its own generator, so its tokens do not depend on who else is in the batch.
        alike: dict[tuple, list[Group]] = {}
        for group in self.groups:
            o = group.sampling
            alike.setdefault((o.temperature, o.top_k, o.top_p), []).append(group)
        chosen, chosen_ids = [], None
        for groups in alike.values():
            seqs = [s for g in groups for s in g.live]
            index = [s.row for s in seqs]
            whole = index == list(range(len(self.rows)))
            rows = logits if whole else logits[index]
            opts = groups[0].sampling
            if opts.temperature == 0:
                ids = rows.argmax(dim=-1)
            else:
                probs = probabilities(rows, opts)
                noise = torch.empty_like(probs)
                for i, seq in enumerate(seqs):
                    arrival_noise(noise[i:i + 1], seq.generator)
                ids = first_arrival(probs, noise)
            if whole:
                chosen_ids = ids
            else:
                if chosen_ids is None:
                    chosen_ids = torch.empty(len(self.rows), dtype=torch.long, device=self.device)
                chosen_ids[index] = ids
            tokens = ids.tolist()
            for seq, token in zip(seqs, tokens):
                seq.tokens.append(token)
                seq.steps += 1
                chosen.append((seq, token, seq.row))
        self.ids = chosen_ids
        return chosen

    def _chosen_natively(self, logits: torch.Tensor, sampled: list[Group]) -> list[tuple[Seq, int, int]]:
        """`step`'s choice for every row, made by decode_loop.c as `steps_at_once` makes it several
        steps at a time: a seeded sequence's waiting times drawn from its generator, so that its
        tokens are the same either way and whoever else is here."""
        noise: list[torch.Tensor | None] = [None] * len(self.rows)
        for group in sampled:
            for seq in group.live:
                if seq.generator is not None:
                    noise[seq.row] = arrival_noise(torch.empty(logits.size(1)), seq.generator)
        samplings = [seq.group.sampling for seq in self.rows]
        ids, _ = decode_loop.choose_rows(logits, samplings, noise)
        self.ids = torch.tensor(ids, dtype=torch.long)
        for seq, token in zip(self.rows, ids):
            seq.tokens.append(token)
            seq.steps += 1
        return [(seq, token, seq.row) for seq, token in zip(self.rows, ids)]

    @torch.no_grad()
    def steps_at_once(self, most: int, end: int | None,
                      logprobs: bool = False) -> tuple[list[list[int]], list[list[float]] | None] | None:
        """Up to `most` steps at once (fewer where a window fills, or every row has given `end`):
        each step's tokens and (`logprobs`) their log-probabilities, a row each, in `self.rows`'
        order, where the decoder's built step takes these rows several steps in a row
        (Decoder.steps: chosen as `_chosen_natively` chooses, so a seeded request's tokens are the
        same either way); else None. `self.logits` is not kept."""
        if not self.rows or not self.built:
            return None
        self._prefill_joined()
        made = self.decoder.steps([s.tokens[-1] for s in self.rows], most, end,
                                  [s.group.sampling for s in self.rows], [s.generator for s in self.rows],
                                  self.never_flags, logprobs)
        if made is None:
            return None
        for r, seq in enumerate(self.rows):
            seq.tokens += [step[r] for step in made[0]]
            seq.steps += len(made[0])
        return made

    def _logits_cached(self) -> torch.Tensor:
        decoder = self.decoder
        self._prefill_joined()
        if len(self.rows) == 1:  # one sequence: its token into a tensor kept for that (13 us less a step)
            last = self._one.fill_(self.rows[0].tokens[-1])
        else:
            last = torch.tensor([[s.tokens[-1]] for s in self.rows], dtype=torch.long, device=self.device)
        return decoder.forward(last)

    def _prefill_joined(self) -> None:
        """The prompts of the groups that joined since the last step, and the windows that filled
        up, into the cache: then every sequence has one token the cache does not hold (its last)."""
        decoder = self.decoder
        decoder.ensure_rows(len(self.rows))
        fresh = [group for group in self.groups if group.fresh]  # joined since the last step
        for group in fresh:
            group.fresh = False
        full = [seq for seq in self.rows if len(seq.tokens) > self.block]  # windows to slide
        for seq in full:
            seq.tokens = seq.tokens[-self.keep:]
        self._prefill([group.seqs[0] for group in fresh] + full)
        for group in fresh:  # its other samples share the prompt: copied, not computed again
            for seq in group.seqs[1:]:
                decoder.cache.copy_row(group.seqs[0].row, seq.row)

    def _prefill(self, seqs: list[Seq]) -> None:
        """Each sequence's window but its last token into its row; neighbouring rows of one length in one call."""
        run: list[Seq] = []
        for seq in sorted(seqs, key=lambda s: s.row) + [None]:
            if run and (seq is None or seq.row != run[-1].row + 1 or len(seq.tokens) != len(run[0].tokens)):
                self.decoder.cache.rows(run[0].row, len(run)).reset()
                if len(run[0].tokens) > 1:
                    window = torch.tensor([s.tokens[:-1] for s in run], dtype=torch.long, device=self.device)
                    self.decoder.forward(window, run[0].row)
                run = []
            if seq is not None:
                run.append(seq)

    def _logits_uncached(self) -> torch.Tensor:
        logits = torch.empty(len(self.rows), self.model.config.vocab_size, device=self.device)
        for group in self.groups:
            live = group.live
            for seq in live:
                if len(seq.tokens) > self.block:
                    seq.tokens = seq.tokens[-self.keep:]
            window = torch.tensor([s.tokens for s in live], dtype=torch.long, device=self.device)
            logits[[s.row for s in live]] = self.model(window, last_only=True)[0][:, -1, :].float()
        return logits
