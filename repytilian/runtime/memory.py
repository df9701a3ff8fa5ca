"""How much memory a training step needs per window, and how much the device has free.

The estimate is deliberately rough and on the high side: it only decides whether a step's windows
go through the model at once or in micro-batches (gradient accumulation), which changes speed a
little and the result not at all. On a CPU running out of memory is not an exception but the
kernel killing the process, so the choice has to be made before the first step.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..config import ModelConfig

MEMORY_SHARE = 0.5  # of the free memory, for one micro-batch's activations (weights, optimiser, the rest)


def available_bytes(device: torch.device, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Free memory on the device (for a CPU: what the kernel says it can give without swapping);
    None where it cannot be told (MPS, or a system without /proc)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def training_bytes_per_window(cfg: ModelConfig, dtype: str) -> int:
    """Memory one window costs in a training step: what autograd keeps per layer and token, about
    34 x width + 5 x heads x context values at 16 bits (Korthikanti et al., 2022: written-out
    attention's T x T scores included, which SDPA does not keep), twice that in float32; plus the
    logits, their softmax and gradient in float32."""
    scale = 1 if dtype in ("bfloat16", "float16") else 2
    T, d = cfg.block_size, cfg.n_embd
    per_layer = T * (34 * d + 5 * cfg.n_head * T) * scale
    return cfg.n_layer * per_layer + 3 * 4 * T * cfg.vocab_size


def largest_fitting(windows: int, per_window: int, available: int | None, share: float = MEMORY_SHARE) -> int:
    """The largest micro-batch that divides `windows` and whose activations fit a share of `available`."""
    if available is None:
        return windows
    cap = max(1, int(available * share) // max(1, per_window))
    return max(n for n in range(1, windows + 1) if windows % n == 0 and n <= cap)
