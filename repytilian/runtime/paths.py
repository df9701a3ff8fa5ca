"""Where Repytilian keeps things on this machine, and the environment variables that move them.

- REPYTILIAN_HOME: the cache (default ~/.cache/repytilian): datasets/ (downloaded data sets),
  tokens/ (large corpora tokenized once), dtype-choices.json (number formats measured here),
  compile-choices.json (whether a long run compiles), long-run-pace.json (a timed run's first steps,
  for `long_run_dropout`), decoding-steps/ (decoding steps built for this machine,
  decode_compiled.py), native/ (fused_attention.c built for this machine),
  attention-choices.json (whether bf16 attention with dropout goes through it, timed here);
- REPYTILIAN_DATA: a folder holding data set files (a mirror for machines without network);
- REPYTILIAN_OFFLINE: never download (data sets, tiktoken's encodings);
- REPYTILIAN_NO_NATIVE: build and use no C code of Repytilian's own (attention with dropout is then
  written out in PyTorch; fused_attention.py);
- REPYTILIAN_NO_PROGRESS: no progress bars or lines (logs only);
- REPYTILIAN_STREAM_MB: text from this size on is streamed, never read whole (default 64);
- REPYTILIAN_DIST_TIMEOUT: under torchrun, seconds a process waits for the others (default 300;
  distributed/world.py reads it).
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    home = os.environ.get("REPYTILIAN_HOME")
    return Path(home) if home else Path.home() / ".cache" / "repytilian"


def progress_wanted() -> bool:
    return not os.environ.get("REPYTILIAN_NO_PROGRESS")


