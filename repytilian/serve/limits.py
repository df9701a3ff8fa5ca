"""What one request, and the server as a whole, may ask for (the flags of repytilian serve set them)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Limits:
    max_tokens: int = 2048  # per request (each of n choices)
    max_prompt_chars: int = 32_000
    max_body_bytes: int = 1_000_000
    max_active: int = 16  # generations at once: they decode together, a batch row per sample
    max_waiting: int = 32  # requests waiting for a turn; more are refused with 429
    max_batch_rows: int = 32  # samples decoding together per model (n counts each); the rest wait in order
    lanes: int | None = None  # batch loops per model on a CPU (batch_loop.Lanes); None: runtime/cpu.batch_lanes
    max_seconds: float = 60.0  # of generation per request: then it ends as "length"
    wait_seconds: float = 30.0  # the longest a request waits for a turn before a 503
    max_n: int = 8
    max_alternatives: int = 10
