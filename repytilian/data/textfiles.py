"""Reading text files piece by piece, so that a corpus never has to fit in memory.

Every text file Repytilian trains on goes through `file_pieces`, which holds the decoding rules
in one place: UTF-8 (a byte-order mark is dropped), Windows line ends become "\\n", and empty,
binary or non-UTF-8 files are refused with a message that says where (documents and UTF-16 text
with what converts them). Small corpora join the pieces into one string (data.py); large ones are
a `TextFiles`, read again whenever a pass over the text is needed (tokenizer training, encoding),
and keyed by the hash of their text.
"""
from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import RepytilianError
from ..events import note
from ..runtime.fileio import open_user_file
from ..tokenizers.base import CHUNK_CHARS, last_safe_cut
from .records import is_records, record_pieces

READ_BYTES = 8 << 20  # bytes read at a time: large enough for speed, small against memory
BINARY_PROBE = 8192  # a NUL byte among the first bytes marks a binary file


def _char_boundary(data: bytes) -> int:
    """The end of the last complete UTF-8 character in `data` (a read may stop inside one)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: a character starts here
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


# Documents people keep their text in, told apart by their first bytes, so the error says what to do
SAVE_AS_TEXT = "save it as plain text (.txt, UTF-8) from the program that made it"
DOCUMENTS = ((b"%PDF-", "a PDF document", "convert it to text first, e.g. `pdftotext {path} {text}`"),
             (b"PK\x03\x04", "a zip archive (as .docx, .odt and .epub files are)", SAVE_AS_TEXT),
             (b"{\\rtf", "an RTF document", SAVE_AS_TEXT),
             (b"\xd0\xcf\x11\xe0", "an old Word or Office document", SAVE_AS_TEXT))
TO_UTF8 = "save it as UTF-8 (in Notepad: Save As, Encoding UTF-8; or convert it with iconv, from {encoding} to UTF-8)"


def _utf16(block: bytes) -> str | None:
    """iconv's name for UTF-16 text, as Windows Notepad's "Unicode" saves it: with a byte-order mark,
    or without one, a NUL in every other byte (the high bytes of Latin letters: the low byte first
    is little-endian), which would otherwise read as binary. None for other text."""
    if block[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "UTF-16"
    probe = block[:BINARY_PROBE - BINARY_PROBE % 2]
    for high, encoding in ((1, "UTF-16LE"), (0, "UTF-16BE")):
        low = probe[1 - high::2]
        # and the other bytes mostly letters, not small numbers: nanoGPT's train.bin of a 65-character
        # vocabulary is little-endian uint16 too, with every high byte 0
        if len(probe) >= 16 and probe[high::2].count(0) >= 0.9 * len(low) and _mostly_text(low):
            return encoding
    return None


def _mostly_text(data: bytes) -> bool:
    return sum(b >= 0x20 or b in b"\t\n\r" for b in data) >= 0.9 * len(data)


def file_pieces(path: Path, read_bytes: int | None = None, text_field: str | None = None) -> Iterator[str]:
    """The decoded, line-end-normalised text of one file, in pieces of about `read_bytes` (READ_BYTES);
    of a JSONL or Parquet file, its records' `text_field` (records.py)."""
    if is_records(path):
        yield from record_pieces(path, text_field)
        return
    read_bytes = read_bytes or READ_BYTES
    with open_user_file(path) as f:
        offset, carry, held_cr = 0, b"", ""
        while True:
            try:  # the first read is large enough for the binary probe and a byte-order mark
                block = f.read(read_bytes if offset else max(read_bytes, BINARY_PROBE))
            except OSError as e:
                raise RepytilianError(f"cannot read {path}: {e.strerror}") from None
            if offset == 0 and not carry:
                if not block:
                    raise RepytilianError(f"{path} is empty: there is no text to train on")
                names = {"path": shlex.quote(str(path)), "text": shlex.quote(str(path.with_suffix(".txt")))}
                for magic, kind, advice in DOCUMENTS:
                    if block.startswith(magic):
                        raise RepytilianError(f"{path} is {kind}, not plain text: {advice.format(**names)}")
                if encoding := _utf16(block):
                    raise RepytilianError(f"{path} is UTF-16 text, which this tool does not read: "
                                          + TO_UTF8.format(encoding=encoding))
                if b"\x00" in block[:BINARY_PROBE]:
                    raise RepytilianError(f"{path} looks like a binary file, not text; give a UTF-8 text file")
                if block.startswith(b"\xef\xbb\xbf"):
                    block, offset = block[3:], 3
            data = carry + block
            end = _char_boundary(data) if block else len(data)
            try:
                text = data[:end].decode("utf-8")
            except UnicodeDecodeError as e:
                raise RepytilianError(
                    f"{path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {offset + e.start}); "
                    "save it as UTF-8 and try again (text from Windows is often in cp1252, which iconv "
                    "converts from, or an editor's 'save as UTF-8')"
                ) from None
            offset += end
            carry = data[end:]
            # A "\r\n" may be split between two reads: hold a final "\r" back until the next one.
            text = held_cr + text
            held_cr = "\r" if block and text.endswith("\r") else ""
            if held_cr:
                text = text[:-1]
            if text:
                yield text.replace("\r\n", "\n")  # Windows line ends would otherwise be tokens of their own
            if not block:
                return


def read_text(path: Path, text_field: str | None = None) -> str:
    return "".join(file_pieces(path, text_field=text_field))


def text_files_under(root: Path) -> list[Path]:
    """Every file under `root`, recursive, sorted by path, hidden files and folders left out."""
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def note_folder_reading(root: Path, skipped: Sequence[Path], files: Sequence[Path] = ()) -> None:
    """What a folder's reading left out (`skipped` of its `files`), and the .json files it read as
    text among other files: a stray tokens.json or metadata.json was trained on without a word (a
    folder of .json files alone has a note of its own: runs/assemble.py)."""
    if skipped:
        note(f"note: skipped {len(skipped)} empty, binary or non-UTF-8 file(s) in {root}: {_names(root, skipped)}")
    left_out = set(skipped)
    read = [f for f in files if f not in left_out]
    json_files = [f for f in read if f.suffix.lower() == ".json"]
    if json_files and len(json_files) < len(read):
        many = "s" if len(json_files) > 1 else ""
        note(f"note: read {len(json_files)} .json file{many} in {root} as text, with the rest: "
             f"{_names(root, json_files)} (JSON token data, such as music, is read by `tokenizer` json from .json "
             "files alone)", settings=("tokenizer",))


def _names(root: Path, paths: Sequence[Path]) -> str:
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return ", ".join(str(p.relative_to(root)) for p in paths[:5]) + more


@dataclass(frozen=True)
class TextFiles:
    """A text corpus too large to hold as one string: its files, and facts about its text.

    The text is that of the files in order; with `newline_after_each`, every file's text ends
    with a newline (one is added where missing), as for a folder given with -p.
    """

    files: tuple[Path, ...]
    newline_after_each: bool
    sha256: str  # of the whole text in UTF-8: the same hash as the in-memory path gives
    chars: int
    size_bytes: int
    text_field: str | None = None  # of JSONL and Parquet files: the field whose text is read (records.py)

    @classmethod
    def scan(cls, files: Sequence[Path], newline_after_each: bool, root: Path | None = None,
             text_field: str | None = None) -> TextFiles:
        """Read every file once to check it, hash the text and count its characters.

        With a `root` (a folder), files that are not UTF-8 text are skipped with a note, as the
        in-memory path does; otherwise any bad file is an error.
        """
        sha, chars, good, skipped = hashlib.sha256(), 0, [], []
        for path in files:
            file_sha, file_chars, last = sha.copy(), chars, ""
            try:
                for piece in file_pieces(path, text_field=text_field):
                    file_sha.update(piece.encode("utf-8"))
                    file_chars += len(piece)
                    last = piece
            except RepytilianError:
                if root is None or is_records(path):  # a broken record is a mistake to tell, not to skip
                    raise
                skipped.append(path)
                continue
            if newline_after_each and not last.endswith("\n"):
                file_sha.update(b"\n")
                file_chars += 1
            sha, chars = file_sha, file_chars
            good.append(path)
        if root is not None:
            note_folder_reading(root, skipped, files)
            if not good:
                raise RepytilianError(f"{root} holds no UTF-8 text files to train on")
        size = sum(p.stat().st_size for p in good)
        return cls(tuple(good), newline_after_each, sha.hexdigest(), chars, size, text_field)

    def pieces(self) -> Iterator[str]:
        """The text, in pieces that may cut anywhere (for hashing, counting, characters)."""
        for path in self.files:
            last = ""
            for piece in file_pieces(path, text_field=self.text_field):
                yield piece
                last = piece
            if self.newline_after_each and not last.endswith("\n"):
                yield "\n"

    def chunks(self, size: int = CHUNK_CHARS) -> Iterator[str]:
        """The text in pieces of about `size` characters, cut only where no tokenizer's
        pre-tokenization can change (tokenizers.base.last_safe_cut), across file boundaries too:
        encoding the chunks one by one gives the ids of the whole text.

        A stretch of text with no safe cut (no spaces or newlines at all) is held whole.
        """
        buffer, start, searched = "", 0, 0
        for piece in self.pieces():
            buffer = buffer[start:] + piece
            searched, start = max(0, searched - start), 0
            while len(buffer) - start > size:
                cut = last_safe_cut(buffer, size, start, search_from=searched)
                if cut is None:  # none yet: wait for more text, and do not search this part again
                    searched = max(0, len(buffer) - 2)  # a cut needs the character before it
                    break
                yield buffer[start:cut]
                start = cut
        if start < len(buffer):
            yield buffer[start:]
