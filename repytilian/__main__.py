"""`python -m repytilian` is the `repytilian` command (from a checkout, under its .venv by itself)."""
import sys

from ._bootstrap import ensure_dependencies

if __name__ == "__main__":
    ensure_dependencies(__file__, module="repytilian")
    from .cli import main

    sys.exit(main())
