"""`python -m repytilian` is the `repytilian` command."""
import sys

from .cli.main import main

sys.exit(main())
