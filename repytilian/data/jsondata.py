"""Reading JSON training data for the json tokenizer.

Accepted, in one file (`-d`) or every `.json` file under a folder (`-p`, sorted):
  1. the original Repytilian's `{"value_list": [tok, tok, ...]}`: one sequence;
  2. a top-level array of tokens `[tok, tok, ...]`: one sequence;
  3. many sequences: an array of arrays of tokens, or an object whose key (`--json-key`) holds
     them; `--json-val-key` names a part that becomes the validation split.

An array whose items are all arrays is ambiguous: a sequence whose tokens are lists (chords), or
a list of sequences. `--json-layout sequence|sequences` decides; without it, such an array is read
as a list of sequences and a note says so and how to choose the other reading.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RepytilianError, SettingError
from ..events import note
from ..runtime.fileio import read_user_file

LAYOUTS = ("sequence", "sequences")


@dataclass
class JsonCorpus:
    train: list[list[Any]]
    val: list[list[Any]] | None
    chars: int
    sha256: str

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.train) + sum(len(s) for s in self.val or [])


def _sequences(value: Any, layout: str | None, where: str, notes: list[str]) -> list[list[Any]]:
    if not isinstance(value, list):
        raise RepytilianError(f"{where}: expected an array of tokens or of sequences, found a JSON {type(value).__name__}")
    all_arrays = bool(value) and all(isinstance(item, list) for item in value)
    if layout == "sequence":
        return [value]
    if layout == "sequences":
        bad = next((i for i, item in enumerate(value) if not isinstance(item, list)), None)
        if bad is not None:
            raise RepytilianError(f"{where}: item {bad} is not an array, so this is not a list of sequences "
                                  "(`json_layout` sequences); try `json_layout` sequence", ("json_layout",))
        return value
    if all_arrays:
        notes.append(f"{where}: an array of {len(value)} arrays, read as {len(value)} sequences "
                     "(use `json_layout` sequence if each inner array is one token, such as a chord)")
        return value
    return [value]


def _parse(path: Path) -> tuple[Any, str]:
    raw = read_user_file(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise RepytilianError(f"{path} is not UTF-8 text (byte offset {e.start})") from None
    try:
        return json.loads(text), text
    except json.JSONDecodeError as e:
        if e.pos == len(text) - len(text.lstrip()):  # its first character: text, not JSON that went wrong
            raise RepytilianError(f"{path} is not JSON (it starts with {text.lstrip()[:20]!r}): `tokenizer` json reads "
                                  "JSON token data (arrays of tokens); leave `tokenizer` json out to train on it as "
                                  "text", ("tokenizer",)) from None
        raise RepytilianError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _keys(doc: Any) -> str:
    return ", ".join(repr(k) for k in list(doc)[:10]) if isinstance(doc, dict) and doc else "none"


def read_json_file(path: Path, key: str | None, val_key: str | None, layout: str | None,
                   notes: list[str]) -> tuple[list[list[Any]], list[list[Any]] | None, str]:
    doc, text = _parse(path)
    if key is None and val_key is None and isinstance(doc, dict) and "value_list" in doc:
        return [_expect_list(doc["value_list"], f"{path}: value_list")], None, text
    if key is not None or val_key is not None or isinstance(doc, dict):
        if not isinstance(doc, dict):
            raise RepytilianError(f"{path}: `json_key` and `json_val_key` need a JSON object at the top, found an array",
                                  ("json_key", "json_val_key"))
        if key is None:
            raise RepytilianError(f"{path} is a JSON object without 'value_list'; name the key that holds the "
                                  f"tokens with `json_key` (its keys: {_keys(doc)})", ("json_key",))
        for k in (key, val_key):
            if k is not None and k not in doc:
                raise RepytilianError(f"{path} has no key {k!r} (its keys: {_keys(doc)})")
        train = _sequences(doc[key], layout, f"{path}: {key}", notes)
        val = _sequences(doc[val_key], layout, f"{path}: {val_key}", notes) if val_key else None
        return train, val, text
    return _sequences(doc, layout, str(path), notes), None, text


def _expect_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise RepytilianError(f"{where} must be an array of tokens")
    return value


def looks_like_token_data(kind: str, value: str) -> bool:
    """Whether text training data is a .json file (or a folder of nothing else) that opens as an
    array or object: JSON token data, which the json tokenizer reads, not its characters."""
    if kind == "file":
        first = Path(value)
        if first.suffix.lower() != ".json":
            return False
    elif kind == "dir" and Path(value).is_dir():
        first = None  # the walk stops at the first file that is not .json (a large folder of text: at once)
        for path in Path(value).rglob("*"):
            if path.is_file() and not path.name.startswith("."):
                if path.suffix.lower() != ".json":
                    return False
                first = first or path
        if first is None:
            return False
    else:
        return False
    try:
        with open(first, "rb") as f:
            start = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    except OSError:
        return False
    return start[:1] in (b"[", b"{")


def read_json_corpus(kind: str, value: str, key: str | None = None, val_key: str | None = None,
                     layout: str | None = None) -> JsonCorpus:
    if layout is not None and layout not in LAYOUTS:
        raise SettingError("json_layout", f"must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if kind == "file":
        files = [Path(value)]
        if files[0].is_dir():
            raise RepytilianError(f"{value} is a folder; use `data_path` for a folder of .json files", ("data_path",))
    elif kind == "dir":
        root = Path(value)
        if not root.is_dir():
            raise RepytilianError(f"no such folder: {root}")
        files = sorted(p for p in root.rglob("*.json") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            raise RepytilianError(f"{root} holds no .json files")
    else:
        raise RepytilianError("the json tokenizer trains on JSON data: give a file as `data_file` or a folder as `data_path`",
                              ("data_file", "data_path"))

    notes: list[str] = []
    train: list[list[Any]] = []
    val: list[list[Any]] = []
    has_val = False
    digest = hashlib.sha256()
    chars = 0
    for f in files:
        t, v, text = read_json_file(f, key, val_key, layout, notes)
        train.extend(s for s in t if s)
        if v is not None:
            has_val = True
            val.extend(s for s in v if s)
        digest.update(text.encode("utf-8"))
        chars += len(text)
    for text in notes[:3]:  # they name json_layout
        note(f"note: {text}", settings=("json_layout",))
    where = value if kind == "file" else f"the .json files under {value}"
    if not train:
        raise RepytilianError(f"{where}: no tokens to train on (every sequence is empty)")
    if has_val and not val:
        raise RepytilianError(f"{where}: the validation part ({val_key!r}) has no tokens")
    return JsonCorpus(train=train, val=val if has_val else None, chars=chars, sha256=digest.hexdigest())
