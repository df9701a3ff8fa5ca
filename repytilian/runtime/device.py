"""Which device a run or a model uses: the one asked for, or the best there is."""
from __future__ import annotations

import time

import torch

from ..errors import SettingError
from .cpu import tune_for_training

RUNS_ON = ("cpu", "cuda", "mps")


def pick_device(name: str = "auto") -> torch.device:
    """CUDA, then Apple MPS, then CPU; or exactly the device asked for."""
    name = name.strip().lower()  # "CPU", "Cuda:0" as typed
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    # torch names more kinds (xla, meta, xpu, ...): a run there failed deep inside torch
    if device is None or device.type not in RUNS_ON:
        meant = {"gpu": " (an NVIDIA GPU is cuda, a Mac's is mps)", "metal": " (a Mac's GPU is mps)",
                 "apple": " (a Mac's GPU is mps)", "nvidia": " (an NVIDIA GPU is cuda)"}.get(name, "")
        raise SettingError("device", f"{name or repr(name)} is not a device this tool runs on{meant}; "
                                     "use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingError("device", f"{name} was asked for, but this PyTorch sees no CUDA GPU; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise SettingError("device", f"{name} was asked for, but this machine has {count} CUDA GPU"
                                     f"{'s' * (count != 1)} (cuda:0 to cuda:{count - 1})")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SettingError("device", "mps was asked for, but MPS is not available here; use cpu")
    return device


def prepare_for_training(device: torch.device) -> None:
    """The process's settings for training on `device`, once, before any step is timed: on a CPU the
    allocator and threads (a fifth of a small step was page faults) and repeatable compiled steps;
    on CUDA, float32 matmuls on tensor cores (TF32) where autocast leaves them in float32 (the
    optimiser's, the loss's, or all of them with dtype float32)."""
    if device.type == "cpu":
        tune_for_training()
        repeatable_compiled_steps()
    elif device.type == "cuda":
        torch.set_float32_matmul_precision("high")


def repeatable_compiled_steps() -> None:
    """Compiled CPU steps that repeat bit for bit, as eager ones do: with torch's deterministic
    algorithms on, Inductor leaves the embedding's backward (rows of gradient added up by token) to
    torch's own kernel. Its C++ code added them with atomic adds from each thread, in an order, and
    so with roundings, that changed from run to run: two compiled runs of one seed on 2 threads
    differed from their first step on, and a resume from the run it continued (2026-12-04).

    Process-wide, as the allocator and threads are; warn_only and without filling new tensors (a cost
    of that mode), since a CPU has no operation it would refuse; a user's own setting stays. Cost:
    within noise of a `tiny` compiled bf16 step (+0.4 ms of 16 in the median of 6 pairs, 2-core Xeon)."""
    if not torch.are_deterministic_algorithms_enabled():
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.utils.deterministic.fill_uninitialized_memory = False


def training_compile_mode(device: torch.device, processes: int, micro_batches: int) -> str | None:
    """torch.compile's mode for training steps: CUDA graphs ("reduce-overhead") for one process that
    steps whole batches on a GPU, else torch's default.

    A small model's CUDA step is bound by launching its kernels, not by the GPU's arithmetic; replayed
    as graphs, `-s hyper`'s step took 6.2 ms against 11.3 and `-s quarter`'s 8.5 against 13.5 (H200,
    2026-12-04). Several processes (DistributedDataParallel's hooks inside backward) and micro-batches
    (gradients added into a graph's outputs before its next replay) keep the default: not measured."""
    if device.type == "cuda" and processes == 1 and micro_batches == 1:
        return "reduce-overhead"
    return None


def wait_for(device: torch.device) -> float:
    """Seconds spent waiting for the work `device` has queued (none on a CPU, whose steps end when done).

    A GPU's training step only queues its kernels (CUDA's and Apple's MPS alike): where the clock is
    read (the loss shown, an evaluation, the end), the wait belongs to the steps, or the time budget
    and tokens/s would leave out what the GPU was still doing."""
    if device.type not in ("cuda", "mps"):
        return 0.0
    started = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        torch.mps.synchronize()
    return time.perf_counter() - started
