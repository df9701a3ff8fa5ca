"""A chat request's messages, checked, as the (role, content) turns `LanguageModel.chat_prompt`
renders: in the model's own chat format where it was fine-tuned to chat, else as a script
(chat_format.py says both).

Models whose tokens are not text (JSON-token models: music and other symbols) are not chat
models; a request for one is a clear 400.
"""
from __future__ import annotations

from typing import Any

from .registry import ModelInfo

ROLES = ("system", "developer", "user", "assistant")  # OpenAI's developer is the system's role
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


def chat_turns(messages: Any, info: ModelInfo) -> list[tuple[str, str]]:
    """The (role, content) turns of a request's `messages`, each checked."""
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
        role = "system" if message["role"] == "developer" else message["role"]
        turns.append((role, _content(message, where)))
    return turns
