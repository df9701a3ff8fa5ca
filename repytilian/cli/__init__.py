"""The command lines: `repytilian VERB`, and the seed's `training.py` and `generate.py`.

The CLI only asks and speaks: it parses flags, builds the library's typed options once, calls one
library function per verb, and turns its results, events and errors into words on stdout and
stderr. The library below it prints nothing. verbs.py holds the parser; each verb has a module.
"""
from .generate import generate_script  # noqa: F401
from .train import training_script  # noqa: F401
from .verbs import main  # noqa: F401
