"""The chat template: how a conversation becomes a prompt for a model trained on plain text.

Repytilian's models learn from text, not from conversations, so the template is the simplest a
text model can follow, a script: each message is a speaker's name in capitals, a colon, a line
break, the message and a blank line; the prompt ends with the assistant's name, and its answer
ends at the next blank line (the end of a speech, as in Tiny Shakespeare):

    SYSTEM:
    You are a helpful assistant.

    USER:
    Good morrow!

    ASSISTANT:

Models whose tokens are not text (JSON-token models: music and other symbols) are not chat
models; a request for one is a clear 400.
"""
from __future__ import annotations

from typing import Any

from .registry import ModelInfo

ROLES = {"system": "SYSTEM", "developer": "SYSTEM", "user": "USER", "assistant": "ASSISTANT"}
END_OF_TURN = "\n\n"
MAX_MESSAGES = 256


class ChatError(Exception):
    def __init__(self, message: str, param: str = "messages", code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


def _content(message: dict[str, Any], where: str) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ChatError(f"{where}.content: only text parts are understood", param=f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise ChatError(f"{where}.content must be a string or a list of text parts", param=f"{where}.content")


def script(turns: list[tuple[str, str]]) -> str:
    """(role, text) turns as the template's text, ending where the assistant speaks next."""
    parts = [f"{ROLES[role]}:\n{text.strip()}{END_OF_TURN}" for role, text in turns]
    return "".join(parts) + f"{ROLES['assistant']}:\n"


def chat_prompt(messages: Any, info: ModelInfo) -> tuple[str, list[str]]:
    """The prompt text for `messages`, and the stop strings that end the assistant's turn."""
    if not info.is_text:
        raise ChatError(f"{info.id} is not a chat model: its tokens are {info.tokenizer} values, not text; "
                        "use /v1/completions with a list of token ids", param="model", code="model_not_chat")
    if not isinstance(messages, list) or not messages:
        raise ChatError("messages must be a non-empty list of {role, content} objects")
    if len(messages) > MAX_MESSAGES:
        raise ChatError(f"at most {MAX_MESSAGES} messages per request")
    turns = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ChatError(f"{where} must be an object with a role and a content", param=where)
        if message.get("role") not in ROLES:
            raise ChatError(f"{where}.role must be one of {', '.join(ROLES)}", param=f"{where}.role")
        turns.append((message["role"], _content(message, where)))
    return script(turns), [END_OF_TURN]
