"""The one exception type for mistakes a user can make and fix.

Anything raised as `RepytilianError` is shown by the command line as a single readable message
(exit code 2, no traceback); every other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2  # the exit code of a command stopped by a RepytilianError


class RepytilianError(Exception):
    """A problem with the user's input, files or environment, with a message that says how to fix it.

    The message names settings as the library does, in backquotes (`block_size`, `data_file`), never
    as a command line's flag; `settings` lists those it names, so each caller can word them its own
    way (the command line as flags: cli/flags.py; the server as the request's JSON fields)."""

    def __init__(self, message: str = "", settings: tuple[str, ...] | list[str] = ()):
        super().__init__(message)
        self.settings = tuple(settings)


class SettingError(RepytilianError):
    """A setting has a value that cannot work. `setting` is its name in the library (a config
    field or a sampling option, e.g. "top_k"), so each caller says it in its own terms: the command
    line as its flag (--top-k), a server as the request's parameter. The message is `problem` after
    the setting's name, or with the name where `problem` says "{setting}"."""

    def __init__(self, setting: str, problem: str, also: tuple[str, ...] = ()):
        self.setting, self.problem = setting, problem
        super().__init__(self.in_terms_of(setting), (setting, *also))

    def in_terms_of(self, name: str) -> str:
        if "{setting}" in self.problem:
            return self.problem.replace("{setting}", name)
        return f"{name} {self.problem}"


def check_type(name: str, value: object, kind: type, words: str) -> None:
    """A SettingError unless `value` is of the numbers `kind` (numbers.Integral or Real: numpy's count;
    True and False do not): a Python caller's "10" or 10.0 was otherwise a TypeError from deep inside."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SettingError(name, f"must be {words}, got {value!r}")
