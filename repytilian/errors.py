"""The one exception type for mistakes a user can make and fix.

Anything raised as `RepytilianError` is shown by the command line as a single readable message
(exit code 2, no traceback); every other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class RepytilianError(Exception):
    """A problem with the user's input, files or environment, with a message that says how to fix it."""
