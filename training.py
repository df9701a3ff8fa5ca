#!/usr/bin/env python3
"""Train a GPT on text: the original Repytilian entry point (flags as in its README).

    python3 training.py                          # Tiny Shakespeare -> models/shakespeare/basic
    python3 training.py -d my.txt -m models/mine -i quick
"""
import sys

from repytilian._bootstrap import ensure_dependencies

if __name__ == "__main__":
    ensure_dependencies(__file__)
    from repytilian.cli import training_script

    sys.exit(training_script())
