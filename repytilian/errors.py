"""The one exception type for mistakes a user can make and fix.

Anything raised as `RepytilianError` is shown by the command line as a single readable message
(exit code 2, no traceback); every other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

EXIT_USER_ERROR = 2  # the exit code of a command stopped by a RepytilianError


class RepytilianError(Exception):
    """A problem with the user's input, files or environment, with a message that says how to fix it."""
