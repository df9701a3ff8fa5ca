"""`LanguageModel`: a trained model with its tokenizer, text in and text out, for Python users.

A thin front over the generation engine (engine.py): it encodes the prompt, builds a `Request`
and gathers the engine's events into what a caller wants (the text, pieces of it as they come,
several samples). It prints nothing and knows nothing of command lines or HTTP.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from .chat_format import SCRIPT_END, ChatFormat, script, turns_of
from .engine import Ended, Engine, Event, Request, Token, shown_text
from .errors import RepytilianError, SettingError
from .events import note, notes_to
from .model import GPT
from .sampling import SamplingOptions, check_lengths
from .stops import stop_list
from .tokenizers import Tokenizer, UnknownTokensError

# Other libraries' names for this one's arguments (OpenAI's API, transformers' generate)
OTHER_NAMES = {"max_tokens": "max_new_tokens", "max_length": "max_new_tokens", "n": "num_samples",
               "num_return_sequences": "num_samples", "stop_sequences": "stop", "timeout": "max_time",
               "do_sample": "temperature"}  # 0 is greedy


def _meant(name: str, sampling: list[str]) -> str:
    """" (did you mean ...?)" for a keyword that `request` does not take, or nothing."""
    request = [p for p in inspect.signature(LanguageModel.request).parameters if p not in ("self", "sampling")]
    meant = OTHER_NAMES.get(name) or next(iter(difflib.get_close_matches(name, sampling + request, 1)), None)
    return f" (did you mean {meant!r}?)" if meant else ""


class LanguageModel:
    """A trained model with its tokenizer. Safe to share between threads only if each call passes
    its own seed; it holds no per-call state."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, meta: dict[str, Any] | None = None,
                 path: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta or {}
        self.path = path
        self.best: dict[str, Any] | None = None  # load_model: the run's best model was chosen over its last
        self.engine = Engine(model, tokenizer)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Prompt ids (the tokenizer's start token for an empty prompt)."""
        if not prompt:
            return self.tokenizer.start_ids()
        try:
            ids = self.tokenizer.encode(prompt)
        except UnknownTokensError as e:
            raise UnknownTokensError(f"cannot continue from this prompt: {e}") from None
        if not ids:
            return self.tokenizer.start_ids()
        block = self.model.config.block_size
        if len(ids) > block:
            note(f"note: the prompt has {len(ids)} tokens; the model sees only the last {block}")
        return ids

    def request(self, prompt: str = "", max_new_tokens: int = 500, *, num_samples: int = 1,
                stop: Sequence[str] = (), max_time: float | None = None, use_cache: bool = True,
                logprobs: bool = False, alternatives: int = 0, cancelled: Callable[[], bool] | None = None,
                dtype: torch.dtype | None = None, prompt_ids: list[int] | None = None, **sampling: Any) -> Request:
        """The engine's request for a text prompt (or for `prompt_ids`, shown as `prompt`); `sampling`
        are `SamplingOptions`'s fields (temperature, top_k, top_p, seed), each with its documented default."""
        known = [f.name for f in dataclasses.fields(SamplingOptions)]
        unknown = sorted(set(sampling) - set(known))
        if unknown:  # as Python words it, but naming what was meant (SamplingOptions is not the caller's)
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}{_meant(unknown[0], known)}")
        if prompt is None:
            prompt = ""
        if not isinstance(prompt, str):
            raise SettingError("prompt", f"must be text, got {type(prompt).__name__} (generate takes a list of prompts)")
        check_lengths(max_new_tokens, num_samples)
        if max_time is not None and not max_time > 0:  # (the engine's Request calls it max_seconds)
            raise SettingError("max_time", f"must be more than 0 seconds, got {max_time}")
        ids = self.encode_prompt(prompt) if prompt_ids is None else prompt_ids
        return Request(ids, int(max_new_tokens), SamplingOptions(**sampling), int(num_samples), stop_list(stop),
                       logprobs, alternatives, max_time, cancelled, prompt, use_cache, dtype)

    # --- chat ------------------------------------------------------------------------------

    @property
    def chat_format(self) -> ChatFormat | None:
        """The chat format the model was fine-tuned in (chat_format.py), or None: a script is used."""
        return ChatFormat.of(self.tokenizer)

    def chat_prompt(self, messages: Sequence[Any]) -> tuple[list[int], list[str]]:
        """The prompt ids of a conversation ((role, content) pairs or {"role", "content"} objects)
        that ask for the assistant's answer, and the stop strings that end it: in the model's own
        chat format, the end token ends it (no stop string); else a script's blank line. A
        conversation longer than the context loses its oldest turns (a system message stays), not
        the start of a turn."""
        if self.tokenizer.input_format != "text":
            raise RepytilianError(f"this model's tokens are {self.tokenizer.name} values, not text: it is not a chat model")
        turns, chat = turns_of(messages), self.chat_format
        system = turns[:1] if turns and turns[0][0] == "system" else []
        kept, block = turns[len(system):], self.model.config.block_size
        ids = self._chat_ids(chat, system + kept)
        while len(ids) > block and len(kept) > 1:
            kept = kept[1:]
            ids = self._chat_ids(chat, system + kept)
        if len(kept) < len(turns) - len(system):
            note(f"note: the conversation is longer than the model's context ({block} tokens): its "
                 f"{len(turns) - len(system) - len(kept)} oldest turns were left out")
        if len(ids) > block:
            note(f"note: the conversation has {len(ids)} tokens; the model sees only the last {block}")
        return ids, [] if chat is not None else [SCRIPT_END]

    def _chat_ids(self, chat: ChatFormat | None, turns: list[tuple[str, str]]) -> list[int]:
        if chat is None:
            with notes_to(lambda event: None):  # the length is chat_prompt's to tell
                return self.encode_prompt(script(turns))
        try:
            return chat.render(self.tokenizer, turns, answer_next=True)[0]
        except UnknownTokensError as e:
            raise UnknownTokensError(f"cannot answer this conversation: {e}") from None

    def chat_events(self, messages: Sequence[Any], max_new_tokens: int = 200, *, stop: Sequence[str] = (),
                    **kwargs: Any) -> Iterator[Event]:
        """The engine's events of the assistant's answer to `messages` (see chat_prompt)."""
        ids, stops = self.chat_prompt(messages)
        stop = [*stops, *stop_list(stop)]
        return self.engine.run(self.request("", max_new_tokens, prompt_ids=ids, stop=stop, **kwargs))

    def chat(self, messages: Sequence[Any], max_new_tokens: int = 200, **kwargs: Any) -> str:
        """The assistant's answer to `messages`, e.g. [{"role": "user", "content": "Who are you?"}]."""
        return "".join(e.text for e in self.chat_events(messages, max_new_tokens, **kwargs)
                       if isinstance(e, (Token, Ended)))

    def events(self, prompt: str = "", max_new_tokens: int = 500, **kwargs: Any) -> Iterator[Event]:
        """The engine's events for `prompt`: Begun, a Token per token, Ended, for each sample."""
        return self.engine.run(self.request(prompt, max_new_tokens, **kwargs))

    def stream(self, prompt: str = "", max_new_tokens: int = 500, **kwargs: Any) -> Iterator[str]:
        """The continuation of `prompt`, piece by piece as it is sampled."""
        for event in self.events(prompt, max_new_tokens, **kwargs):
            if isinstance(event, (Token, Ended)) and event.text:
                yield event.text

    def generate(self, prompt: str | Sequence[str] = "", max_new_tokens: int = 500, **kwargs: Any) -> str | list[str]:
        """The continuation of `prompt` (for JSON models: the JSON array of the new tokens); for a list
        of prompts, a list of continuations, decoded together as one batch (each prompt with the same
        settings; a seed gives each prompt the text it would get alone with that seed)."""
        if prompt is None or isinstance(prompt, (str, bytes)):  # (bytes: named as such, not as a list of ints)
            return self.samples(prompt, max_new_tokens, num_samples=1, **kwargs)[0]
        requests = [self.request(text, max_new_tokens, **kwargs) for text in prompt]
        return [texts[0] for texts in self._gather(self.engine.run_many(requests), [1] * len(requests))]

    def samples(self, prompt: str = "", max_new_tokens: int = 500, num_samples: int = 1, **kwargs: Any) -> list[str]:
        """`num_samples` continuations, sampled together as one batch."""
        events = ((0, event) for event in self.events(prompt, max_new_tokens, num_samples=num_samples, **kwargs))
        return self._gather(events, [num_samples])[0]

    def _gather(self, events: Iterator[tuple[int, Event]], samples: list[int]) -> list[list[str]]:
        """Each request's texts, from the engine's (request index, event) pairs."""
        texts = [[""] * n for n in samples]
        ids: list[list[list[int]]] = [[[] for _ in range(n)] for n in samples]
        for index, event in events:
            if isinstance(event, Token):
                ids[index][event.sample].append(event.id)
            if isinstance(event, (Token, Ended)):
                texts[index][event.sample] += event.text
        if self.tokenizer.input_format == "json":  # the values as JSON, not the display's layout
            return [[self.tokenizer.decode(new) for new in request] for request in ids]
        return texts

    def shown(self, prompt: str, prompt_ids: list[int], ids: Sequence[int], stop: Sequence[str] = ()) -> str:
        """The whole display text (prompt, text, closing syntax) of a sample whose new ids are `ids`,
        as the engine's events show it: for showing the first tokens of a longer sample."""
        return shown_text(self.tokenizer, prompt, prompt_ids, ids, stop)
