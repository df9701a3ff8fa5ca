"""Causal attention with dropout on its weights in one pass on a CPU: fused_attention.c, built here once.

On a CPU, dropping out attention weights means building them: PyTorch's fused attention kernel
never does, so with dropout the attention is written out (attention.explicit_causal_attention),
and each (T, T) matrix of scores, weights, mask and gradients went through memory several times.
At the `v3c` shape that made dropout everywhere 1.19-1.24x a float32 training step, against 1.06x
with the attention weights kept whole; in one pass it is 1.06x too (2-core AMD EPYC, AVX2,
2026-12-03, benchmarks/bench_dropout.py).
fused_attention.c computes one (batch, head) pair at a time so that its matrices stay in the
core's cache, skips the future, and draws the mask from a hash of each weight's place and a seed
(one number from torch's generator, so a resumed run draws the same masks) instead of storing it.

The C file is built with the system's compiler (`cc`, or $CC) for this CPU, kept in the cache
folder (decoding steps' neighbour) and loaded with ctypes; it runs on torch's own OpenMP threads.
It computes in float32 and takes bf16 too (autocast's mix: q and k may be float32, v bf16); in bf16
it is timed against the written-out attention, which has the CPU's bf16 matrix products.
A training run on a CPU whose model drops out attention weights installs it (`install`); where
there is no compiler, or REPYTILIAN_NO_NATIVE is set, attention with dropout is written out as before.
The two are the same function: tests/test_fused_attention.py checks the one against the other
with the same mask, drawn here in Python (`keep_mask`). The library also drops out the embeddings'
and the residual branches' values in one pass (`dropout_apply`; fused_dropout.py), and `install`
puts that into dropout.py: a training run on a CPU installs it where its model has any dropout.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
import time
from pathlib import Path

import torch

from .. import attention, dropout
from ..events import note
from . import native_build
from .precision import machine_key, read_choices, remember_choices

SOURCE = Path(__file__).with_name("fused_attention.c")
# Each flag set is tried in turn: the first where OpenMP is missing (a Mac's clang), the last where
# the compiler does not know this CPU. The fast-math subset allows vectorised sums and maxima;
# the kernel's inputs are finite (a NaN upstream reaches the loss through the residual stream).
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-march=native"],
    ["-O3"],
)
COMMON_FLAGS = ["-fno-math-errno", "-fno-trapping-math", "-fassociative-math", "-fno-signed-zeros",
                "-ffinite-math-only", "-shared", "-fPIC"]
_M32 = 0xFFFFFFFF
_LEVELS = 1 << 16  # a weight's draw: 16 bits, as dropout.py's
_TAKES = (torch.float32, torch.bfloat16)
CHOICES_FILE = "attention-choices.json"  # in the cache folder: bf16's way, timed once per machine and shape


_lib: ctypes.CDLL | None = None  # loaded by install()
_tried = False  # install() looked for it (and said why not, where it could not load it)
_ready = False  # loaded, and runs on as many threads as torch (a build without OpenMP runs on one)
_bf16 = False  # bf16 inputs go through it too: measured faster than written out (bf16's own matmuls)


def install(bf16_at: tuple[int, int, int, int] | None = None) -> bool:
    """Find this machine's build of the library (or build it, the first time: under a second), load
    it, and let the model's attention take this way where it can (`attention.use_cpu_dropout_kernel`).
    False, with a note the first time, where there is no compiler or the build fails. A training run
    on a CPU whose model drops out attention weights calls it (trainer.Trainer), before any timing.

    float32 always takes it (it only saves work there). A bf16 run gives its attention's (batch,
    heads, T, head size) as `bf16_at`: written out, bf16 gets the CPU's bf16 matrix products, which
    the kernel (float32 arithmetic) does not use, so the two are timed at that shape, once for the
    machine (`one_pass_pays_in_bf16`), and bf16 takes the faster."""
    global _lib, _tried, _ready, _bf16
    if not os.environ.get("REPYTILIAN_NO_NATIVE") and not _tried:
        _tried = True
        _lib = _load()
    _ready = (not os.environ.get("REPYTILIAN_NO_NATIVE") and _lib is not None
              and (_lib.threaded or torch.get_num_threads() == 1))
    _bf16 = False
    attention.use_cpu_dropout_kernel(fused_or_none if _ready else None)
    from . import fused_dropout  # its operator calls this library

    dropout.use_cpu_kernel(fused_dropout if _ready else None)
    if _ready and bf16_at is not None:
        _bf16 = one_pass_pays_in_bf16(bf16_at)
    return _ready


def fused_or_none(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor | None:
    return fused_causal_attention(q, k, v, dropout_p) if usable(q, k, v, dropout_p) else None


def usable(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> bool:
    """Whether `fused_causal_attention` takes these: float32 (or bf16, where it measured faster) on
    a CPU, with dropout, head sizes a multiple of 8, and the library installed. (Module globals
    only: torch.compile traces this.)"""
    return (_ready and 0 < _dropped(dropout_p) < _LEVELS and q.device.type == "cpu" and q.dim() == 4
            and q.size(-1) % 8 == 0 and all(t.dtype in _TAKES for t in (q, k, v))
            and (_bf16 or q.dtype == k.dtype == v.dtype == torch.float32))


def fused_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """explicit_causal_attention(q, k, v, dropout_p) for (B, nh, T, hs) tensors, each float32 or bf16
    (computed in float32; the result in bf16 if any of them is, as autocast's), its mask drawn from
    one random number of torch's generator. The result is laid out (B, T, nh, hs)."""
    seed = torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64)
    return torch.ops.repytilian.dropped_attention(q, k, v, float(dropout_p), seed)[0]


def one_pass_pays_in_bf16(shape: tuple[int, int, int, int]) -> bool:
    """Whether attention with dropout on bf16 (B, heads, T, head size) inputs is faster through the
    kernel than written out, forward and backward: remembered per machine and shape with its
    figures (CHOICES_FILE), timed the first time (a note says so: seconds on a CPU without bf16)."""
    key = f"{machine_key()}: attention with dropout 0.1, bf16, (B, heads, T, head size) {tuple(shape)}"
    choices = read_choices(CHOICES_FILE)
    known = choices.get(key)
    if isinstance(known, dict) and isinstance(known.get("one_pass"), bool):
        return known["one_pass"]
    note(f"timing attention with dropout in bf16 at {tuple(shape)}, written out against one pass "
         "(once for this machine and shape)")
    one_pass, written_out = _bf16_timings(shape)
    choices[key] = {"one_pass": one_pass < written_out, "one_pass_ms": round(one_pass * 1e3, 2),
                    "written_out_ms": round(written_out * 1e3, 2)}
    remember_choices(choices, CHOICES_FILE)
    return one_pass < written_out


def _bf16_timings(shape: tuple[int, int, int, int], rounds: int = 2) -> tuple[float, float]:
    """The fastest forward and backward of each way, in turn (one, other, one, ...): seconds."""
    with torch.random.fork_rng(devices=[]):  # the run's own random stream stays untouched
        torch.manual_seed(0)
        q, k, v, grad = (torch.randn(shape).to(torch.bfloat16) for _ in range(4))
        q, k, v = (t.requires_grad_() for t in (q, k, v))
        ways = (fused_causal_attention, attention.explicit_causal_attention)
        best = [float("inf")] * len(ways)
        for round_ in range(rounds + 1):  # the first round warms up both
            for i, way in enumerate(ways):
                start = time.perf_counter()
                way(q, k, v, 0.1).backward(grad)
                if round_:
                    best[i] = min(best[i], time.perf_counter() - start)
                q.grad = k.grad = v.grad = None
    return best[0], best[1]


def keep_mask(seed: int, shape: tuple[int, int, int], dropout_p: float) -> torch.Tensor:
    """The (B * nh, T, T) mask of kept weights that fused_attention.c draws for `seed` (its hash,
    in torch's int64 arithmetic): for tests, and as the definition in Python."""
    pairs, T, _ = shape
    dropped = _dropped(dropout_p)
    seed &= (1 << 64) - 1
    rows = torch.arange(pairs * T, dtype=torch.int64).view(pairs, T, 1)
    r = _mix32((rows & _M32) ^ (seed >> 32))
    columns = _times32(torch.arange(T, dtype=torch.int64), 0x9E3779B9)
    h = _mix32(r ^ columns ^ (seed & _M32))
    return (h >> 16) >= dropped


def _times32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for 32-bit x without overflowing int64: in two 16-bit halves."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _times32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _times32(x, 0x846CA68B)
    return x ^ (x >> 16)


# --- the library: built once for this machine and source ---

def _load() -> ctypes.CDLL | None:
    try:
        path = _built()
        lib = ctypes.CDLL(str(path))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        note(f"note: the fused attention could not be built or loaded ({type(e).__name__}: "
             f"{(str(e).splitlines() or [''])[0][:160]}); attention with dropout is written out "
             "(a step about 1.2x as long; with a C compiler, cc, it is computed in one pass)")
        return None
    tensor, sizes = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64)  # data; a shape or strides
    first = [sizes, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int]  # shape, weights dropped of 65,536, seed, threads
    lib.attention_forward.argtypes = first + [tensor, sizes] * 4 + [tensor]
    lib.attention_backward.argtypes = first + [tensor, sizes] * 4 + [tensor] + [tensor, sizes] * 4
    lib.dropout_apply.argtypes = [ctypes.c_int64, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int, tensor, tensor,
                                  ctypes.c_int]  # values, dropped of 65,536, seed, threads, in, out, bf16
    lib.threaded = bool(lib.attention_threads())
    return lib


def _built() -> Path:
    """The library for this machine and source, built into the cache folder unless it is there."""
    return native_build.built(SOURCE, FLAG_SETS, COMMON_FLAGS)


# --- the operators: opaque to torch.compile, differentiable ---

def _rows_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _like_heads(q: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty (B, nh, T, hs) tensor laid out (B, T, nh, hs): the heads are put side by side next."""
    B, nh, T, hs = q.shape
    return q.new_empty(B, T, nh, hs, dtype=dtype).transpose(1, 2)


def _result_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """bf16 if any input is, as autocast's matrix products give (a model's q and k may come out of
    their norms in float32 while v is bf16)."""
    return torch.bfloat16 if any(t.dtype == torch.bfloat16 for t in tensors) else torch.float32


def _dropped(p: float) -> int:
    """Of 65,536 possible draws, how many drop a weight: dropout.py's rounding, computed in one place."""
    return round(p * _LEVELS)


def _pointed(*tensors: torch.Tensor) -> list:
    """Each tensor as the C side takes it: its data, then its (B, H, T) strides and 1 for bf16."""
    return [item for t in tensors
            for item in (t.data_ptr(), (ctypes.c_int64 * 4)(*t.stride()[:3], int(t.dtype == torch.bfloat16)))]


def common(p: float, seed: torch.Tensor) -> tuple[int, int, int]:
    """What each of the library's entry points takes first after its shape: the draws of 65,536
    that drop a value, the seed as 64 unsigned bits, and the threads to run on (torch's)."""
    return _dropped(p), int(seed) & ((1 << 64) - 1), torch.get_num_threads() if _lib.threaded else 1


def _call(entry, q: torch.Tensor, p: float, seed: torch.Tensor, *pointers) -> None:
    """One of the library's two entry points, on the (B, H, T, D) shape of q and torch's threads."""
    if entry((ctypes.c_int64 * 4)(*q.shape), *common(p, seed), *pointers):
        raise MemoryError("the fused attention could not allocate its buffers")


@torch.library.custom_op("repytilian::dropped_attention", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float,
             seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q, k, v = _rows_last(q), _rows_last(k), _rows_last(v)
    out, lse = _like_heads(q, _result_dtype(q, k, v)), q.new_empty(q.shape[:3], dtype=torch.float32)
    _call(_lib.attention_forward, q, p, seed, *_pointed(q, k, v, out), lse.data_ptr())
    return out, lse


@_forward.register_fake
def _(q, k, v, p, seed):
    return _like_heads(q, _result_dtype(q, k, v)), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("repytilian::dropped_attention_backward", mutates_args=())
def _backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
              grad: torch.Tensor, p: float, seed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v, grad, lse = _rows_last(q), _rows_last(k), _rows_last(v), _rows_last(grad), lse.contiguous()
    gq, gk, gv = _like_heads(q), _like_heads(k), _like_heads(v)
    _call(_lib.attention_backward, q, p, seed, *_pointed(q, k, v, out), lse.data_ptr(), *_pointed(grad, gq, gk, gv))
    return gq, gk, gv


@_backward.register_fake
def _(q, k, v, out, lse, grad, p, seed):
    return _like_heads(q), _like_heads(k), _like_heads(v)


def _save(ctx, inputs, output) -> None:
    q, k, v, p, seed = inputs
    ctx.save_for_backward(q, k, v, output[0], output[1], seed)
    ctx.p = p


def _gradients(ctx, grad, _grad_lse):
    q, k, v, out, lse, seed = ctx.saved_tensors
    return (*_backward(q, k, v, out, lse, grad, ctx.p, seed), None, None)


_forward.register_autograd(_gradients, setup_context=_save)
