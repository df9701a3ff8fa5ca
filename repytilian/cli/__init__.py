"""The command lines: `repytilian VERB`, and the seed's `training.py` and `generate.py`.

The CLI only asks and speaks: it parses flags, calls the library (api.py), and turns its results
and errors into words on stdout and stderr. commands.py holds the parsers and the verbs; bench.py and
tokenize.py are the `bench` and `tokenize` verbs.
"""
from .commands import generate_script, main, training_script  # noqa: F401
