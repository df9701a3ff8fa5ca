"""Stop strings: cut a stream of text where the first of them appears, never showing part of one.

Text that could be the start of a stop string is held back until it is clear that it is not.
Each stop string is followed by a small automaton (Knuth-Morris-Pratt: how much of the string the
text seen so far ends with), so a piece of text costs time in its own length, whatever the
length of the stop strings; the check that looked at every prefix of every stop string grew with
the square of their length at every token.

Where the text is cut does not depend on how it arrives in pieces: it is cut where the first stop
string to be completed begins (of two completed by the same character, the longer one).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import SettingError


def stop_list(stop: str | Iterable[str] | None) -> list[str]:
    """A Python caller's stop strings: one string is one stop string, as OpenAI's API takes it (it
    was read as the list of its characters: stop="\\n\\n" stopped at the first line break)."""
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if isinstance(stops, (bytes, dict)) or not isinstance(stops, Iterable):
        raise SettingError("stop", f"must be text or a list of texts, got {stop!r}")
    stops = list(stops)
    if not all(isinstance(s, str) for s in stops):
        raise SettingError("stop", f"must be text or a list of texts, got {stop!r}")
    return [s for s in stops if s]


class _Matcher:
    """How many characters of `word` the text seen so far ends with."""

    def __init__(self, word: str):
        self.word = word
        self.matched = 0
        # fallback[i]: the longest proper prefix of word[: i + 1] that is also its suffix
        self.fallback = [0] * len(word)
        k = 0
        for i in range(1, len(word)):
            while k and word[i] != word[k]:
                k = self.fallback[k - 1]
            if word[i] == word[k]:
                k += 1
            self.fallback[i] = k

    def feed(self, char: str) -> bool:
        """One more character; True when the text now ends with the whole word."""
        k, word = self.matched, self.word
        while k and word[k] != char:
            k = self.fallback[k - 1]
        if word[k] == char:
            k += 1
        if k == len(word):
            self.matched = self.fallback[k - 1]
            return True
        self.matched = k
        return False


class StopFilter:
    """Passes text through until one of the stop strings appears, and cuts it there."""

    def __init__(self, stops: Sequence[str] = ()):
        self.matchers = [_Matcher(s) for s in dict.fromkeys(stops) if s]
        self.buffer = ""  # text held back: it ends with the start of a stop string
        self.stopped = False

    def push(self, text: str) -> str:
        """The part of `text` (and of what was held back) that can be shown now."""
        if self.stopped or not text:
            return ""
        if not self.matchers:
            return text
        start = len(self.buffer)
        self.buffer += text
        for offset, char in enumerate(text):
            ends = [m.word for m in self.matchers if m.feed(char)]
            if ends:
                cut = start + offset + 1 - max(map(len, ends))
                out, self.buffer, self.stopped = self.buffer[:cut], "", True
                return out
        hold = max(m.matched for m in self.matchers)
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out):]
        return out

    def flush(self) -> str:
        """The held-back text, at the end of the stream (it was not a stop string after all)."""
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out

    def cut(self, text: str) -> str:
        """A whole text, up to the first stop string."""
        return self.push(text) + self.flush()
