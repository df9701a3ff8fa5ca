"""Text kept in records: a JSONL file (`{"text": ...}` a line) or a Parquet file (a `text` column),
the forms most published data sets come in. `-d FILE.jsonl`, `-d FILE.parquet`, and such files in
a `-p` folder train on one field or column of each record (`text_field`, default `text`), each
record's text ending with a line break, as each file of a folder does.

Both are read a record at a time (JSONL line by line, Parquet in batches of rows through pyarrow,
`pip install 'repytilian[parquet]'`), so a file larger than memory streams as a large text file
does (textfiles.py). A broken line, a missing field or a value that is not text is one error that
names the file and the line (or row).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import RepytilianError
from ..runtime.fileio import open_user_file

SUFFIXES = (".jsonl", ".parquet")
DEFAULT_FIELD = "text"
ROWS_PER_BATCH = 1024


_JSON_KINDS = {bool: "true or false", int: "a number", float: "a number", list: "a list", dict: "an object"}


def is_records(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def record_pieces(path: Path, field: str | None = None) -> Iterator[str]:
    """Each record's text in `field`, with a line break after it (Windows line ends made "\\n")."""
    field = field or DEFAULT_FIELD
    values = _parquet_values(path, field) if path.suffix.lower() == ".parquet" else _jsonl_values(path, field)
    any_text = False
    for where, value in values:
        if not isinstance(value, str):
            kind = "nothing (null)" if value is None else _JSON_KINDS.get(type(value), f"a {type(value).__name__}")
            raise RepytilianError(f"{where}: the field {field!r} holds {kind}, not text", ("text_field",))
        text = value.replace("\r\n", "\n")
        any_text = any_text or bool(text)
        yield text if text.endswith("\n") else text + "\n"
    if not any_text:
        raise RepytilianError(f"{path} has no text in its field {field!r} to train on", ("text_field",))


def jsonl_lines(path: Path, digest: Any = None) -> Iterator[tuple[str, Any]]:
    """(where, the value) of each non-blank line of a JSONL file, read a line at a time (the file is
    never whole in memory); `digest` (a hashlib object) sees every byte."""
    with open_user_file(path) as f:
        for number, raw in enumerate(f, 1):
            if digest is not None:
                digest.update(raw)
            where = f"{path}: line {number}"
            if not raw.strip():
                continue
            try:
                yield where, json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8"))
            except UnicodeDecodeError:
                raise RepytilianError(f"{where} is not UTF-8 text") from None
            except json.JSONDecodeError as e:
                raise RepytilianError(f"{where} is not JSON ({e.msg}, column {e.colno})") from None


def _chat_hint(record: dict) -> str:
    """For conversations given as text: how a chat fine-tune takes them (data/conversations.py)."""
    if not {"messages", "conversations"} & set(record):
        return ""
    return "; or, as these are conversations, fine-tune a model to chat on them: `chat` with the model as `load`"


def _jsonl_values(path: Path, field: str) -> Iterator[tuple[str, Any]]:
    for where, record in jsonl_lines(path):
        if not isinstance(record, dict):
            raise RepytilianError(f"{where} is not a JSON object with a {field!r} field", ("text_field",))
        if field not in record:
            fields = ", ".join(map(repr, list(record)[:8])) or "none"
            raise RepytilianError(f"{where} has no field {field!r} (it has {fields}); `text_field` names "
                                  f"the one to train on{_chat_hint(record)}", ("text_field", "chat", "load"))
        yield where, record[field]


def _parquet_values(path: Path, field: str) -> Iterator[tuple[str, Any]]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise RepytilianError(f"reading {path.name} needs pyarrow: pip install 'repytilian[parquet]'") from None
    try:
        table = parquet.ParquetFile(path)
    except Exception as e:  # pyarrow's errors share no base class worth naming
        raise RepytilianError(f"{path} could not be read as Parquet ({type(e).__name__}: {e})") from None
    names = table.schema_arrow.names
    if field not in names:
        raise RepytilianError(f"{path} has no column {field!r} (it has {', '.join(map(repr, names[:8]))}); "
                              f"`text_field` names the one to train on{_chat_hint(dict.fromkeys(names))}",
                              ("text_field", "chat", "load"))
    row = 0
    for batch in table.iter_batches(batch_size=ROWS_PER_BATCH, columns=[field]):
        for value in batch.column(0).to_pylist():
            row += 1
            yield f"{path}: row {row}", value
