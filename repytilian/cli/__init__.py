"""The command lines: `repytilian VERB`, and the seed's `training.py` and `generate.py`.

The CLI only asks and speaks: it parses flags, builds the library's typed options once, calls one
library function per verb, and turns its results, events and errors into words on stdout and
stderr. The library below it prints nothing. verbs.py holds the parser; each verb has a module.
"""
from __future__ import annotations

from collections.abc import Sequence

# Each entry point imports only its own verb: generate.py needs neither training nor the server's
# modules (importing every verb cost generate.py ~100 ms of its start-up).


def generate_script(argv: Sequence[str] | None = None) -> int:
    from .generate import generate_script as script

    return script(argv)


def training_script(argv: Sequence[str] | None = None) -> int:
    from .train import training_script as script

    return script(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from .verbs import main as verbs_main

    return verbs_main(argv)
