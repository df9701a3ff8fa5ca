"""Conversations to fine-tune a chat model on (`training.py --chat FILE`).

A JSONL file with one conversation per line in the messages format that OpenAI's fine-tuning files
and Hugging Face chat data sets use,

    {"messages": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "..."}]}

or a folder of such files (sorted by path), or a Parquet or Arrow file with a `messages` column
(through pyarrow: `pip install 'repytilian[parquet]'`); ShareGPT's conversations, prompt/completion
pairs and Alpaca's instructions are read as the same messages (`_messages`). Every line is checked before training, and
a bad one is named by its file and line (or row).

Each conversation is rendered by the model's chat format (chat_format.py) and becomes one row of
a batch on its own: conversations never see each other, and a batch is as long as its longest
conversation, not the context. Only the assistant's tokens (and their end token) are learned.
A conversation longer than the context is cut to it, with a note that counts them.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..chat_format import ROLES, ChatFormat
from ..errors import RepytilianError
from ..events import note
from ..tokenizers import Tokenizer, UnknownTokensError
from .records import jsonl_lines

SUFFIXES = (".jsonl", ".parquet", ".arrow")
TABLE_COLUMNS = (("messages",), ("conversations",), ("prompt", "completion"), ("instruction", "output"))
IGNORED = -100  # the target of a token not learned (cross_entropy's ignore_index)
VAL_FRACTION = 0.1



@dataclass
class Conversation:
    where: str  # its file and line (or row), for messages about it
    messages: list[tuple[str, str]]  # (role, content)


def read_conversations(path: str | Path) -> tuple[list[Conversation], str]:
    """The conversations of a file or folder, checked, and a digest of what was read."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise RepytilianError(f"{path} holds no conversation files ({', '.join(SUFFIXES)})")
    elif path.is_file():
        files = [path]
    else:
        raise RepytilianError(f"no such file or folder: {path}")
    digest = hashlib.sha256()
    conversations: list[Conversation] = []
    for file in files:
        for where, record in _records(file, digest):
            conversations.append(_conversation(record, where))
    if not conversations:
        raise RepytilianError(f"{path} holds no conversations")
    return conversations, digest.hexdigest()


def _records(file: Path, digest: Any) -> Iterator[tuple[str, Any]]:
    """(where, the record's value) for each conversation of a file."""
    if file.suffix in (".parquet", ".arrow"):
        yield from _table_records(file, digest)
    else:
        yield from jsonl_lines(file, digest)


def _table_records(file: Path, digest: Any) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.feather as feather
        import pyarrow.parquet as parquet
    except ImportError:
        raise RepytilianError(f"reading {file.suffix} files needs pyarrow: pip install 'repytilian[parquet]'") from None
    digest.update(file.read_bytes())
    try:
        table = parquet.read_table(file) if file.suffix == ".parquet" else feather.read_table(file)
    except Exception as e:  # pyarrow's own errors name no common base class
        raise RepytilianError(f"{file} could not be read as {file.suffix[1:]} ({type(e).__name__}: {e})") from None
    columns = next((c for c in TABLE_COLUMNS if set(c) <= set(table.column_names)), None)
    if columns is None:
        raise RepytilianError(f"{file} has no 'messages' column, nor the columns of another form of chat data "
                              f"({'; '.join(', '.join(c) for c in TABLE_COLUMNS[1:])}); it has: "
                              f"{', '.join(table.column_names)}")
    names = [*columns, *(["input"] if columns == ("instruction", "output") and "input" in table.column_names else [])]
    for number, row in enumerate(table.select(names).to_pylist(), 1):
        yield f"{file}: row {number}", row


# ShareGPT's speakers (many Hugging Face chat data sets) in OpenAI's roles
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
SHAPES = ('{"messages": [{"role": ..., "content": ...}, ...]}, ShareGPT\'s {"conversations": [{"from": ..., '
          '"value": ...}, ...]}, {"prompt": ..., "completion": ...} or Alpaca\'s {"instruction": ..., "output": ...}')


def _messages(record: Any, where: str) -> list:
    """A record's messages in OpenAI's form, from the forms chat data comes in (SHAPES)."""
    if isinstance(record, dict) and isinstance(record.get("messages"), list):
        return record["messages"]
    if isinstance(record, list):  # the messages alone
        return record
    if isinstance(record, dict) and isinstance(record.get("conversations"), list):
        turns = []
        for i, turn in enumerate(record["conversations"], 1):
            speaker = turn.get("from") if isinstance(turn, dict) else None
            if speaker not in SHAREGPT_ROLES:
                raise RepytilianError(f"{where}: turn {i} is from {speaker!r}; ShareGPT's speakers are "
                                      f"{', '.join(SHAREGPT_ROLES)}")
            turns.append({"role": SHAREGPT_ROLES[speaker], "content": turn.get("value")})
        return turns
    if isinstance(record, dict) and {"prompt", "completion"} <= record.keys():
        return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]
    if isinstance(record, dict) and {"instruction", "output"} <= record.keys():
        asked, extra = record["instruction"], record.get("input")
        if isinstance(asked, str) and isinstance(extra, str) and extra.strip():
            asked = f"{asked}\n\n{extra}"  # the input after the instruction, as Alpaca's own template has it
        return [{"role": "user", "content": asked}, {"role": "assistant", "content": record["output"]}]
    raise RepytilianError(f"{where}: expected a conversation: {SHAPES}")


def _conversation(record: Any, where: str) -> Conversation:
    messages = []
    for i, message in enumerate(_messages(record, where), 1):
        if not isinstance(message, dict):
            raise RepytilianError(f"{where}: message {i} is not an object with a role and a content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise RepytilianError(f"{where}: message {i} has the role {role!r}; a role is one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise RepytilianError(f"{where}: message {i} ({role}) has no content")
        messages.append((role, content))
    if not any(role == "assistant" for role, _ in messages):
        raise RepytilianError(f"{where}: the conversation has no assistant message, so nothing to learn from it")
    return Conversation(where, messages)


@dataclass
class ChatExamples:
    """One split's conversations as ids, end to end: conversation i is ids[starts[i]:starts[i+1]],
    and learned[j] says whether ids[j] is a token the model learns to predict."""

    ids: np.ndarray
    learned: np.ndarray
    starts: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.ids[key]

    @property
    def conversations(self) -> int:
        return len(self.starts) - 1

    @property
    def learned_tokens(self) -> int:
        return int(self.learned.sum())

    def rows(self, picks: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T) and y (B, T) for these conversations, T the longest one's length less one (at most
        the context); y is IGNORED where a token is not learned and after a conversation ends."""
        lengths = np.minimum(self.starts[picks + 1] - self.starts[picks], block_size + 1)
        width = int(lengths.max()) - 1
        x = np.zeros((len(picks), width), dtype=np.int64)
        y = np.full((len(picks), width), IGNORED, dtype=np.int64)
        for row, (i, n) in enumerate(zip(picks, lengths)):
            ids = self.ids[self.starts[i]: self.starts[i] + n]
            learned = self.learned[self.starts[i] + 1: self.starts[i] + n]
            x[row, : n - 1] = ids[:-1]
            y[row, : n - 1] = np.where(learned, ids[1:], IGNORED)
        return torch.from_numpy(x), torch.from_numpy(y)

    def batch(self, batch_size: int, block_size: int, generator: torch.Generator,
              part: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Random conversations, one a row (a process reads its `part`; the stream moves on by all)."""
        picks = torch.randint(self.conversations, (batch_size,), generator=generator).numpy()[part]
        return self.rows(picks, block_size)


@dataclass
class ChatData:
    """The train and validation conversations of a chat fine-tune (the Trainer's data)."""

    train: ChatExamples
    val: ChatExamples
    sha256: str = ""
    chars: int = 0

    def check_block_size(self, block_size: int) -> None:
        """Conversations longer than the context were cut when they were tokenized (tokenize)."""


def tokenize(conversations: list[Conversation], tokenizer: Tokenizer, chat: ChatFormat,
             block_size: int, what: str) -> ChatExamples:
    """The conversations as ids; one longer than the context is cut to it (a note counts them), and
    one with nothing left to learn after the cut is left out."""
    ids, learned, starts = [], [], [0]
    cut, longest, dropped = 0, 0, 0
    for conversation in conversations:
        try:
            these, flags = chat.render(tokenizer, conversation.messages)
        except UnknownTokensError as e:
            raise RepytilianError(f"{conversation.where}: {e}") from None
        longest = max(longest, len(these))
        if len(these) > block_size + 1:
            cut += 1
            these, flags = these[: block_size + 1], flags[: block_size + 1]
        if not any(flags[1:]):
            dropped += 1
            continue
        ids += these
        learned += flags
        starts.append(len(ids))
    if cut:
        left = f", {dropped} of them with no answer left and so left out" if dropped else ""
        note(f"note: {cut} of the {len(conversations)} {what} conversations are longer than the context of "
             f"{block_size} tokens (the longest has {longest}) and were cut to it{left}")
    if len(starts) == 1:
        raise RepytilianError(f"none of the {what} conversations has an answer within the context of {block_size} "
                              f"tokens (the longest has {longest}); train a model with a longer context")
    return ChatExamples(np.asarray(ids, dtype=np.int64), np.asarray(learned, dtype=bool),
                        np.asarray(starts, dtype=np.int64))


def read_chat(path: str | Path, val_path: str | Path | None
              ) -> tuple[list[Conversation], list[Conversation], str, int]:
    """The training and validation conversations of `path` (the last tenth validates, or those of
    `val_path`), a digest of what was read, and how many characters `path`'s conversations hold."""
    conversations, digest = read_conversations(path)
    if val_path is not None:
        val, val_digest = read_conversations(val_path)
        digest = hashlib.sha256((digest + val_digest).encode()).hexdigest()
        train = conversations
    else:
        if len(conversations) < 2:
            raise RepytilianError(f"{path} has one conversation: give at least two (the last tenth, at least "
                                  "one, is kept to validate on), or a second file as `chat_val`", ("chat_val",))
        n_val = max(1, int(len(conversations) * VAL_FRACTION))
        train, val = conversations[:-n_val], conversations[-n_val:]
    chars = sum(len(content) for conversation in conversations for _, content in conversation.messages)
    return train, val, digest, chars


def chat_data(path: str | Path, val_path: str | Path | None, tokenizer: Tokenizer, chat: ChatFormat,
              block_size: int, read: tuple[list[Conversation], list[Conversation], str, int] | None = None
              ) -> ChatData:
    """The conversations of `path` as training data (read_chat; `read`: what it gave, where the caller
    has read them already)."""
    train, val, digest, chars = read or read_chat(path, val_path)
    return ChatData(tokenize(train, tokenizer, chat, block_size, "training"),
                    tokenize(val, tokenizer, chat, block_size, "validation"), digest, chars)
