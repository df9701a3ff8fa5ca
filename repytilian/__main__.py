"""`python -m repytilian` is the `repytilian` command."""
import sys

from .cli import main

sys.exit(main())
