"""CPU settings for training: freed memory kept between steps, one thread per physical core.

Memory (glibc's malloc, on Linux). Every training step allocates and frees the same activations.
By default glibc hands large freed blocks back to the system (munmap, heap trimming), so the next
step faults them back in, page by zero-filled page: measured on 2 cores, that was a fifth of a
`tiny` step (29 ms -> 23 ms in bf16, 40 ms -> 34 ms in float32 once kept). Raising the mmap and
trim thresholds keeps the blocks in the heap for reuse, which is what jemalloc or tcmalloc (as
PyTorch's CPU performance guide suggests) would do, without a dependency or LD_PRELOAD. The
process's RSS then stays near the training's peak between steps instead of dipping; the peak
itself does not grow.

Threads. PyTorch can start one intra-op thread per logical CPU (OpenMP's default); on a CPU with
two hardware threads per core that puts two threads of matmul on each core's one set of vector
units, which is usually slower than one. Training lowers the thread count to the physical cores
this process may run on (never raises it), unless the user chose with OMP_NUM_THREADS or
MKL_NUM_THREADS. This machine (2 cores, 1 thread each) cannot show the gain; the rule is the one
PyTorch's CPU guide gives.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt's parameter numbers (malloc.h)
MMAP_THRESHOLD = 32 << 20  # glibc's ceiling on 64-bit: blocks up to this size come from the heap
TRIM_THRESHOLD = 1 << 30  # free heap kept before any is returned
TOP_PAD = 64 << 20  # the heap grows in steps this large, not a page at a time

_done = False


def keep_freed_memory() -> bool:
    """Tune malloc for repeated large allocations; False where it is not glibc's (nothing changes)."""
    global _done  # a process-wide setting by nature: applying it twice is harmless, but say so once
    if _done:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # The mmap threshold first: setting the trim threshold alone switches off glibc's own
        # adaptive mmap threshold and leaves every block over 128 KiB mapped and unmapped each
        # time (measured: twice as slow).
        if not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
            return False
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        libc.mallopt(M_TOP_PAD, TOP_PAD)
    except (OSError, AttributeError):
        return False
    _done = True
    return True


CPU_SYSFS = Path("/sys/devices/system/cpu")


def physical_cores(sysfs: Path = CPU_SYSFS, allowed: set[int] | None = None) -> int | None:
    """Cores this process may run on, each counted once however many hardware threads it has;
    None where the topology cannot be read (not Linux)."""
    if allowed is None:
        allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    cores = set()
    for cpu in allowed:
        try:
            cores.add((sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:
            return None
    return len(cores) or None


def usable_cores() -> int:
    """The cores to plan threads and lanes for: the physical ones this process may use, or the
    logical CPUs where the topology cannot be read."""
    return physical_cores() or os.cpu_count() or 1


def threads_chosen() -> bool:
    """Whether the user chose the thread count for the process (OMP_NUM_THREADS, MKL_NUM_THREADS)."""
    return any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))


def use_physical_cores() -> int:
    """Lower torch's intra-op threads to the physical cores, unless the user chose; the thread count."""
    cores = physical_cores()
    if not threads_chosen() and cores and torch.get_num_threads() > cores:
        torch.set_num_threads(cores)
    return torch.get_num_threads()


def threads_beside_a_server() -> int:
    """Decoding threads for a batch of several requests in a server: one core fewer than the physical
    ones (at least one), unless the user chose (OMP_NUM_THREADS, MKL_NUM_THREADS). The event loop
    and the HTTP work of many clients need a core of their own: where the decoding threads take
    them all, a token's parallel work waits for a thread the operating system has put aside.
    Measured on 2 cores (v2c, 64-token requests, the batch loop in process): 8 clients 1,161-1,421
    tokens/s with two threads, 1,848 with one; one client alone is faster with both (114 against
    168 ms a request), so a lone request keeps them (batch_loop.py). Measured again on a 2-core Xeon
    with no OpenMP team but the batch loop's (serve/admission.py), 2026-12-04: 8 clients 5,146 tokens/s
    on one thread, 5,192 on two."""
    cores = usable_cores()
    return torch.get_num_threads() if threads_chosen() else max(1, min(torch.get_num_threads(), cores - 1))


def batch_lanes() -> int:
    """Batch loops a server runs side by side for a model on a CPU whose batches decode through
    built steps (batch_loop.Lanes, steps_in_c): two where there are two cores or more. Measured on 2
    cores only (batch_loop.py has the figures): more lanes on more cores are untried, and
    `serve --lanes` chooses."""
    return 2 if usable_cores() >= 2 else 1


@contextlib.contextmanager
def one_thread_off_the_main_thread() -> Iterator[None]:
    """Within it, a thread other than the main one computes on one thread, where its thread count is
    OpenMP's default for a new thread and the user chose none (OMP_NUM_THREADS, MKL_NUM_THREADS).
    OpenMP gives each thread that computes in parallel a team of its own, and the main thread has one
    as soon as it has loaded a model; with more OpenMP threads than cores, libgomp's workers sleep
    between parallel regions, and every step wakes them. Measured on a 2-core Xeon (2026-12-04),
    decoding from a second thread after the main one had computed: the `hyper` shape 578 ms for 100
    tokens on two threads, 200-246 on one (160 in the main thread); v2c 64 tokens 173 against 36 ms."""
    default = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    before = torch.get_num_threads()
    if threads_chosen() or threading.current_thread() is threading.main_thread() or before != default:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The kernel's CPU flags (x86 'flags', Arm 'Features') of the first CPU; None where unreadable."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):
                return set(value.split())
    except OSError:
        pass
    return None


def cpu_name() -> str:
    """The processor's model name, as the kernel reports it (a machine's name in benchmarks)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tune_for_training() -> None:
    """What a training process on a CPU sets once: both of the above."""
    keep_freed_memory()
    use_physical_cores()
