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

A group's tokens are drawn from its own random generator (seeded by its request), for its own
sequences in their order: a seeded request gives the same tokens alone or in a batch, as long as
the model gives the same numbers for a row whatever else is in the batch.

Without the cache (`use_cache=False`) each group's window is run through the model whole at every
step: the reference the cached path is tested against.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .decode import Decoder, choose_dtype
from .model import GPT
from .sampling import KEEP_FRACTION, SamplingOptions, choose_next


@dataclass
class Seq:
    """One sample's place in the batch: its window (the tokens the model sees; the last one is
    not in the cache yet), its row, and how many tokens it has been given."""

    group: Group
    sample: int
    tokens: list[int]
    row: int = -1
    steps: int = 0


@dataclass
class Group:
    """The samples of one request: one prompt, one way of sampling, one random generator."""

    prompt_ids: list[int]
    sampling: SamplingOptions
    num_samples: int = 1
    owner: Any = None  # the engine's own record of the request
    generator: torch.Generator | None = None
    seqs: list[Seq] = field(default_factory=list)
    fresh: bool = True  # not prefilled yet

    @property
    def live(self) -> list[Seq]:
        return [s for s in self.seqs if s.row >= 0]


class Batch:
    """The sequences decoding together with one model (see the module's docstring)."""

    def __init__(self, model: GPT, dtype: torch.dtype | None = None, use_cache: bool = True,
                 decoder: Decoder | None = None):
        model.eval()
        self.model = model
        self.block = model.config.block_size
        self.keep = max(1, int(self.block * KEEP_FRACTION))
        self.device = model.lm_head.weight.device
        self.use_cache = use_cache
        self.decoder = decoder
        if use_cache and decoder is None:
            self.decoder = Decoder(model, 1, dtype or choose_dtype(model, 1))
        self.rows: list[Seq] = []  # rows[i].row == i: the live sequences, in their cache rows
        self.groups: list[Group] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, prompt_ids: Sequence[int], sampling: SamplingOptions, num_samples: int = 1,
            owner: Any = None) -> Group:
        """A group of `num_samples` sequences continuing `prompt_ids`; they get tokens from the next step."""
        if not prompt_ids:
            raise ValueError("a prompt needs at least one token (the tokenizer's start ids)")
        group = Group(list(prompt_ids)[-self.block:], sampling, num_samples, owner)
        if sampling.seed is not None:
            group.generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        for sample in range(num_samples):
            seq = Seq(group, sample, list(group.prompt_ids), len(self.rows))
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
    def step(self) -> list[tuple[Seq, int, torch.Tensor]]:
        """The next token of every live sequence: (sequence, token, the float32 logits it was drawn from)."""
        if not self.rows:
            return []
        logits = self._logits_cached() if self.use_cache else self._logits_uncached()
        chosen = []
        for group in self.groups:
            live = group.live
            rows = logits[[s.row for s in live]]
            for seq, token, row_logits in zip(live, choose_next(rows, group.sampling, group.generator)[:, 0].tolist(),
                                              rows):
                seq.tokens.append(token)
                seq.steps += 1
                chosen.append((seq, token, row_logits))
        return chosen

    def _logits_cached(self) -> torch.Tensor:
        decoder = self.decoder
        decoder.ensure_rows(len(self.rows))
        for group in self.groups:
            if group.fresh:  # joined since the last step: its prompt but the last token into its rows
                group.fresh = False
                first, *others = group.seqs
                self._prefill(first)
                for seq in others:
                    decoder.cache.copy_row(first.row, seq.row)
            else:
                for seq in group.live:
                    if len(seq.tokens) > self.block:  # the window is full: keep its last part
                        seq.tokens = seq.tokens[-self.keep:]
                        self._prefill(seq)
        last = torch.tensor([[s.tokens[-1]] for s in self.rows], dtype=torch.long, device=self.device)
        return decoder.forward(last)

    def _prefill(self, seq: Seq) -> None:
        self.decoder.reset(seq.row)
        if len(seq.tokens) > 1:
            self.decoder.forward(torch.tensor([seq.tokens[:-1]], dtype=torch.long, device=self.device), seq.row)

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
