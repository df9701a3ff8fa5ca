"""The chat format a model learns when it is fine-tuned on conversations, kept with the model.

Each message is its role's special token, the content, and the end-of-turn token; an answer is
asked for with the assistant's token, and ends when the model writes the end token:

    <|system|>You are terse.<|end|><|user|>What is 2+3?<|end|><|assistant|>5<|end|>

The four tokens are special (tokenizers/specials.py): no text encodes to them, so a message that
contains `<|end|>` is just those characters. The format is read off the tokenizer (a tokenizer with
the four tokens has it) and written into the model's config.json with its Jinja template, the form
transformers' `apply_chat_template` and llama.cpp read, so that every consumer renders a
conversation to the same ids.

A model without it (trained on plain text) is prompted with a script instead, the simplest
template a text model can follow: each message is a speaker's name in capitals, a colon, a line
break, the message and a blank line; the prompt ends with the assistant's name, and its answer
ends at the next blank line (the end of a speech, as in Tiny Shakespeare):

    USER:
    Good morrow!

    ASSISTANT:
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import RepytilianError
from .tokenizers import Tokenizer
from .tokenizers.specials import END_OF_TURN

FORMAT = "repytilian-chat-1"
ROLES = ("system", "user", "assistant")
TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>", "end": END_OF_TURN}
# What transformers (apply_chat_template) and llama.cpp run: the same as `render` below
SCRIPT_NAMES = {"system": "SYSTEM", "user": "USER", "assistant": "ASSISTANT"}
SCRIPT_END = "\n\n"  # where a script's turn ends (a stop string)
TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@dataclass(frozen=True)
class ChatFormat:
    ids: dict[str, int]  # "system", "user", "assistant", "end" -> token id

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> "ChatFormat | None":
        """The tokenizer's chat format, where it has the four tokens."""
        specials = tokenizer.specials
        if not all(token in specials for token in TOKENS.values()):
            return None
        return cls({key: specials[token] for key, token in TOKENS.items()})

    @property
    def end(self) -> int:
        return self.ids["end"]

    def render(self, tokenizer: Tokenizer, messages: Iterable[tuple[str, str]],
               answer_next: bool = False) -> tuple[list[int], list[bool]]:
        """The ids of (role, content) messages and, for each id, whether it is the assistant's to
        learn (its content and its end token; not the role tokens, which the template gives).
        With `answer_next`, ending with the assistant's token: the prompt for an answer."""
        ids: list[int] = []
        learned: list[bool] = []
        for role, content in messages:
            if role not in ROLES:
                raise RepytilianError(f"unknown role {role!r}: a message's role is one of {', '.join(ROLES)}")
            body = tokenizer.encode(content)
            answer = role == "assistant"
            ids += [self.ids[role], *body, self.end]
            learned += [False, *[answer] * len(body), answer]
        if answer_next:
            ids.append(self.ids["assistant"])
            learned.append(False)
        return ids, learned

    def to_dict(self) -> dict[str, Any]:
        """What config.json keeps under "chat"."""
        return {"format": FORMAT, "tokens": TOKENS, "ids": self.ids, "template": TEMPLATE}


def with_chat_tokens(tokenizer: Tokenizer) -> tuple[Tokenizer, ChatFormat]:
    """The tokenizer with the chat format's four tokens (itself, where it has them already)."""
    if tokenizer.input_format != "text":
        raise RepytilianError(f"the {tokenizer.name} tokenizer's tokens are not text: a chat needs a text model "
                              "(characters, words, bpe or gpt2)")
    extended = tokenizer.with_specials(list(TOKENS.values()))
    chat = ChatFormat.of(extended)
    assert chat is not None
    return extended, chat


def script(turns: Iterable[tuple[str, str]]) -> str:
    """(role, text) turns as a script, ending where the assistant speaks next."""
    parts = [f"{SCRIPT_NAMES[role]}:\n{text.strip()}{SCRIPT_END}" for role, text in turns]
    return "".join(parts) + f"{SCRIPT_NAMES['assistant']}:\n"


def turns_of(messages: Iterable[Any]) -> list[tuple[str, str]]:
    """(role, content) pairs from messages given as pairs or as {"role", "content"} objects
    (OpenAI's "developer" is the system's role)."""
    if isinstance(messages, (str, dict)):  # one message where a list of them belongs (a "not enough values" before)
        raise RepytilianError('the messages are a list, e.g. [{"role": "user", "content": "Good morrow!"}]')
    turns = []
    for i, message in enumerate(messages, 1):
        if isinstance(message, dict):
            role, content = message.get("role"), message.get("content")
        elif isinstance(message, (tuple, list)) and len(message) == 2:
            role, content = message
        else:
            role = content = None
        role = "system" if role == "developer" else role
        if role not in ROLES or not isinstance(content, str):
            raise RepytilianError(f"message {i}: a role ({', '.join(ROLES)}) and a text content are needed")
        turns.append((role, content))
    return turns
