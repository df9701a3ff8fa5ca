"""Library settings in the command line's words: the flag of each setting that an error names."""
from __future__ import annotations

from ..config import flag_fields
from ..errors import RepytilianError, SettingError

# Settings whose flag is not simply --name-with-dashes
FLAGS = {"iterations": "-i/--iterations"}


def flag_for(setting: str) -> str:
    """The command-line flag of a library setting (a config field or a sampling option)."""
    own = {f.name: f.metadata["flag"] for _, f in flag_fields()}
    return own.get(setting) or FLAGS.get(setting) or "--" + setting.replace("_", "-")


def in_flags(error: RepytilianError) -> str:
    """A library error in the command line's words: a setting named by its flag."""
    return error.in_terms_of(flag_for(error.setting)) if isinstance(error, SettingError) else str(error)
