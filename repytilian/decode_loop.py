"""Several tokens of each sequence of a batch through its built step, chosen and fed back in C
(decode_loop.c); and a batch's sampled tokens a step at a time, chosen by the same code (`choose_rows`).

Through the generation engine, a token of a small model cost about three times its built step:
v2c 249 us a token against a 75 us bf16 step (2-core Xeon with AMX, 2026-12-04), the rest being
Python around each step. Here the engine's Python runs once for up to engine.TOKENS_AT_ONCE tokens.

The C file is built like fused_attention.c (runtime/native_build.py) and loaded with ctypes; it
reaches torch and the step's library through function pointers found here. The batch step's
instance is shared with the steps a call at a time; the one-row step gets an instance of its own (a
second copy of the weights that the library holds: the one the engine calls a step at a time is
torch's runner, ~11 us a call faster than ctypes from Python).
Where anything is missing (no compiler, REPYTILIAN_NO_NATIVE, a platform without the library's C
interface) `TokenLoop.make` gives None and tokens go one at a time as before, with a note once.
"""
from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

from .errors import RepytilianError
from .events import note
from .runtime import native_build
from .runtime.native_step import NativeStep, check_owned, new_handles
from .sampling import SamplingOptions, arrival_noise

SOURCE = Path(__file__).with_name("decode_loop.c")
FLAG_SETS = (["-O2"],)
COMMON_FLAGS = ["-shared", "-fPIC"]
NOT_A_NUMBER, ERRORS = -2, {-1: "the built decoding step failed", -3: "out of memory"}  # decode_loop.c's


class _Torch(ctypes.Structure):
    _fields_ = [("new_handle", ctypes.c_void_p), ("from_blob", ctypes.c_void_p), ("data_ptr", ctypes.c_void_p),
                ("release", ctypes.c_void_p), ("run", ctypes.c_void_p), ("container", ctypes.c_void_p),
                ("float32", ctypes.c_int32), ("cpu", ctypes.c_int32)]


class _Choice(ctypes.Structure):
    _fields_ = [("temperature", ctypes.c_double), ("top_k", ctypes.c_int64), ("top_p", ctypes.c_double),
                ("noise", ctypes.c_void_p), ("never", ctypes.c_void_p), ("seed", ctypes.c_uint64),
                ("logprobs", ctypes.c_int32)]


_lib: ctypes.CDLL | None = None
_tried = False


def _library() -> ctypes.CDLL | None:
    """This machine's build of decode_loop.c, loaded once a process; None (with a note) where it cannot be had."""
    global _lib, _tried
    if os.environ.get("REPYTILIAN_NO_NATIVE"):
        return None
    if _tried:
        return _lib
    _tried = True
    try:
        path = native_build.built(SOURCE, FLAG_SETS, COMMON_FLAGS)
        check_owned(path)
        lib = ctypes.CDLL(str(path))
        torch_lib = ctypes.CDLL(_torch_library())
        lib.torch_calls = [ctypes.cast(getattr(torch_lib, f"aoti_torch_{name}"), ctypes.c_void_p).value
                           for name in ("new_tensor_handle", "create_tensor_from_blob", "get_data_ptr",
                                        "delete_tensor_object")]
        lib.codes = (torch_lib.aoti_torch_dtype_float32(), torch_lib.aoti_torch_device_type_cpu())
        lib.release = torch_lib.aoti_torch_delete_tensor_object
        lib.release.argtypes = [ctypes.c_void_p]
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
        note(f"note: the decoding loop could not be built or loaded ({type(e).__name__}: "
             f"{(str(e).splitlines() or [''])[0][:160]}); built steps decode a token at a time")
        return None
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.decode_steps.argtypes = [ctypes.POINTER(_Torch), p, i64, i64, p, p, p, i64, i64, i64, i64, i64,
                                 ctypes.POINTER(_Choice), p, p]
    lib.decode_steps.restype = i64
    lib.choose_rows.argtypes = [p, i64, i64, ctypes.POINTER(_Choice), p, p]
    lib.choose_rows.restype = i64
    _lib = lib
    return lib


def available() -> bool:
    """Whether this machine's build of the library can be had (built here the first time)."""
    return _library() is not None


def choose_rows(logits: torch.Tensor, samplings: Sequence[SamplingOptions], noise: Sequence[torch.Tensor | None],
                never: torch.Tensor | None = None, logprobs: bool = False,
                seeds: Sequence[int] | None = None) -> tuple[list[int], list[float] | None]:
    """The next token of each row of float32 logits (rows, vocab), each row sampled its own way:
    with its waiting times `noise[r]` (vocab,) where given (drawn by torch: a seeded request's, so
    that alone and in a batch it draws the same ones), else its own (from `seeds[r]`, or
    `own_seeds`); and (`logprobs`) their log-probabilities. What sampling.py chooses for the same waiting times (tests check one
    against the other). A RepytilianError for NaN, as sampling.first_arrival."""
    lib = _library()
    if lib is None:
        raise OSError("the decoding loop is not available here")
    logits = logits.float().contiguous()
    rows, vocab = logits.shape
    kept = [None if n is None else n.float().contiguous() for n in noise]  # alive through the call
    choices = _choices(samplings, kept, never, logprobs, seeds)
    ids, chances = torch.empty(rows, dtype=torch.int64), torch.empty(rows)
    _check(lib.choose_rows(logits.data_ptr(), rows, vocab, choices, ids.data_ptr(), chances.data_ptr()))
    return ids.tolist(), chances.tolist() if logprobs else None


def choose(logits: torch.Tensor, sampling: SamplingOptions, noise: torch.Tensor | None = None,
           never: torch.Tensor | None = None, seed: int = 0) -> tuple[int, float]:
    """choose_rows for one row (vocab,): its id and log-probability."""
    ids, chances = choose_rows(logits[None], [sampling], [noise], never, logprobs=True, seeds=[seed])
    return ids[0], chances[0]


def own_seeds(samplings: Sequence[SamplingOptions], noise: Sequence[torch.Tensor | None]) -> list[int]:
    """A seed of 64 bits for each row that samples with no waiting times given (an unseeded
    request's), from one draw of torch's generator, so that they follow torch's seed
    (`torch.manual_seed`); 0 for the others. Greedy and seeded rows leave torch's generator alone."""
    rows = [o.temperature > 0 and n is None for o, n in zip(samplings, noise)]
    if not any(rows):
        return [0] * len(rows)
    first = int(torch.randint(-(1 << 63), (1 << 63) - 1, (1,)))
    return [(first + r * 0x9E3779B97F4A7C15) % (1 << 64) if own else 0 for r, own in enumerate(rows)]


def _choices(samplings: Sequence[SamplingOptions], noise: Sequence[torch.Tensor | None], never: torch.Tensor | None,
             logprobs: bool, seeds: Sequence[int] | None = None) -> ctypes.Array:
    """Each row's way of choosing, as decode_loop.c takes it (`noise` and `never` must outlive the call)."""
    never_at = never.data_ptr() if never is not None else None
    return (_Choice * len(samplings))(*(
        _Choice(o.temperature, o.top_k or 0, o.top_p, n.data_ptr() if n is not None else None, never_at, seed,
                logprobs)
        for o, n, seed in zip(samplings, noise, own_seeds(samplings, noise) if seeds is None else seeds)))


def _check(made: int) -> None:
    if made == NOT_A_NUMBER:  # as sampling.first_arrival says it
        raise RepytilianError("the model produced invalid probabilities (NaN); its weights may be damaged")
    if made < 0:
        raise RuntimeError(f"the decoding loop failed: {ERRORS.get(made, made)}")


def _torch_library() -> str:
    folder = Path(torch.__file__).parent / "lib"
    found = sorted(folder.glob("libtorch_cpu.*"))
    if not found:
        raise OSError(f"no libtorch_cpu in {folder}")
    return str(found[0])


class TokenLoop:
    """A built step's library (one row, or a batch's rows), a second instance, called from C for
    several steps at once."""

    def __init__(self, lib: ctypes.CDLL, step: NativeStep, vocab: int):
        self._lib, self.vocab = lib, vocab
        self._step = step  # keeps the instance (and the library) alive
        self._torch = _Torch(*lib.torch_calls, *step.entry, *lib.codes)

    @classmethod
    def make(cls, path: Path, vocab: int, step: object = None) -> TokenLoop | None:
        """The loop over the step built at `path`, through `step` where it is the library's C
        interface already (a batch step's), else through an instance of its own (checked as
        native_step.load does); or None."""
        lib = _library()
        if lib is None:
            return None
        try:
            if not isinstance(step, NativeStep):
                check_owned(path)
                step = NativeStep(path)
            return cls(lib, step, vocab)
        except (OSError, RuntimeError) as e:
            note(f"note: the decoding loop could not load the built step ({type(e).__name__}: {e}); "
                 "built steps decode a token at a time")
            return None

    def steps(self, inputs: list[torch.Tensor], span: torch.Tensor, min_span: int, count: int, end: int | None,
              samplings: Sequence[SamplingOptions], generators: Sequence[torch.Generator | None],
              never: torch.Tensor | None, logprobs: bool) -> tuple[list[list[int]], list[list[float]] | None]:
        """Up to `count` steps of the rows whose step inputs (keys and values a layer, each row's
        token (rows, 1) and position (rows,): changed in place as tokens are made) are `inputs`:
        each step's tokens, a row each, and (`logprobs`) their log-probabilities. Fewer once a row's
        window is full (position = block), or every row has given `end`. A seeded row's generator
        draws its waiting times for the `count` steps at once, as a step at a time draws them (torch
        draws one stream): the caller keeps `count` within the rows' windows and budgets."""
        positions = inputs[-1]
        rows, block, vocab = positions.numel(), span.numel(), self.vocab
        noise = [arrival_noise(torch.empty(count, vocab), g) if o.temperature > 0 and g is not None else None
                 for o, g in zip(samplings, generators)]
        choices = _choices(samplings, noise, never, logprobs)
        ids, chances = torch.empty(count, rows, dtype=torch.int64), torch.empty(count, rows)
        handles = new_handles(inputs)
        try:
            made = self._lib.decode_steps(ctypes.byref(self._torch), (ctypes.c_void_p * len(handles))(*handles),
                                          len(handles), rows, inputs[-2].data_ptr(), positions.data_ptr(),
                                          span.data_ptr(), min_span, block, vocab, count, -1 if end is None else end,
                                          choices, ids.data_ptr(), chances.data_ptr())
        finally:
            for h in handles:
                self._lib.release(h)
        _check(made)
        return ids[:made].tolist(), chances[:made].tolist() if logprobs else None
