#!/usr/bin/env python3
"""Generate text from a trained model: the original Repytilian entry point (flags as in its README).

    python3 generate.py                                  # from models/shakespeare/basic
    python3 generate.py -m models/mine -c "My lady" -t 200
"""
import sys

from repytilian._bootstrap import ensure_dependencies

if __name__ == "__main__":
    ensure_dependencies(__file__)
    from repytilian.cli import generate_script

    sys.exit(generate_script())
