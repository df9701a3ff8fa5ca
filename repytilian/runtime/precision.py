"""Which number format training and decoding compute in: known or measured, never assumed.

float32 weights and optimiser state always; the forward pass may run under autocast in bfloat16
(CPUs with native bf16 and recent GPUs) or float16 (CUDA, with a gradient scaler).

A CPU is not one kind of machine. Where it has native bf16 (x86 with AVX512-BF16 or AMX, Arm with
the BF16 extension), bf16 matmuls run about 2x faster than float32, more with AMX; where it has
not (AVX2-only x86, like most laptops), PyTorch emulates them, about 100x slower. So
`cpu_bf16()` answers first, from what the CPU says of itself (torch's CPU capability, the
kernel's CPU flags, oneDNN's ISA cap) and one small matmul timed for milliseconds: a CPU without
native bf16 never has bf16 timed at length. Where bf16 is native, small models still gain little
from it (its conversions cost what its faster matmuls save), so `auto` times a few steps of both,
each timing bounded by `PROBE_SECONDS`, and keeps the faster. The choice is stored with the model,
so a resumed run computes exactly as before.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import DTYPE_CHOICES
from ..errors import SettingError
from ..model import GPT
from .cpu import cpu_flags, cpu_name
from .fileio import atomic_write_bytes
from .paths import cache_dir

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}  # autocast's format
assert set(DTYPES) == set(DTYPE_CHOICES) - {"auto"}  # the choices are listed once, in config.py
MIN_GAIN = 1.15  # bf16 must be this much faster to be worth its rounding
TIMING_TOKENS = 1024  # per timed step: enough that small models are timed at their real batch size
PROBE_SECONDS = 2.0  # a timing of one number format gives up after this long and counts as slower
NATIVE_MIN_RATIO = 0.5  # a bf16 matmul below this share of float32's speed is emulated, not native
PROBE_SIZE = 256  # the probe's square matmul: microseconds where bf16 is native, ~20 ms where not
MEASURE_ROUNDS = 6  # float32 and bf16 steps timed in turn, 3 pairs each way
NOISY_SPREAD = 1.3  # a format's repeats further apart than this: the machine was busy, not remembered
RECHECK_STEPS, RECHECK_SECONDS = 10, 3.0  # the run's own steps that may contradict a remembered choice
RECHECK_BELOW = 0.8  # the run's time per token below this share of the remembered measurement's

# oneDNN's ISA names (ONEDNN_MAX_CPU_ISA) up to which its bf16 kernels are not yet allowed.
_ONEDNN_NO_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


@dataclass(frozen=True)
class Bf16Support:
    native: bool
    why: str  # what decided it, in words: "native bf16", "torch's CPU capability is AVX2, ...", ...


def _up_front_no(machine: str, capability: str, onednn_isa: str, flags: set[str] | None) -> str | None:
    """Why this CPU has no native bf16, from its description alone; None if it may have it."""
    x86 = machine.lower() in ("x86_64", "amd64", "i386", "i686")
    if x86 and not capability.upper().startswith("AVX512"):
        return f"torch's CPU capability is {capability}, without AVX-512"
    if onednn_isa and onednn_isa.upper() in _ONEDNN_NO_BF16:
        return f"ONEDNN_MAX_CPU_ISA={onednn_isa} leaves out oneDNN's bf16 kernels"
    if flags is not None:
        if x86 and not flags & {"avx512_bf16", "amx_bf16"}:
            return "the CPU flags have neither avx512_bf16 nor amx_bf16"
        if not x86 and "bf16" not in flags:
            return "the CPU features have no bf16"
    return None


def _matmul_seconds(dtype: torch.dtype, n: int = PROBE_SIZE, repeats: int = 3) -> float:
    a = torch.randn(n, n).to(dtype)
    best = float("inf")
    for i in range(repeats + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        a @ a
        elapsed = time.perf_counter() - t0
        if i:
            best = min(best, elapsed)
        if elapsed > PROBE_SECONDS / 4:  # already plainly slow: no need to wait for more
            return elapsed
    return best


@functools.lru_cache(maxsize=1)
def bf16_slowdown() -> float:
    """How many times slower a bf16 matmul is than a float32 one on this CPU (below 1: faster)."""
    state = torch.get_rng_state()  # probing must not shift anybody's random stream
    try:
        return _matmul_seconds(torch.bfloat16) / _matmul_seconds(torch.float32)
    finally:
        torch.set_rng_state(state)


@functools.lru_cache(maxsize=1)
def cpu_bf16() -> Bf16Support:
    """Whether this CPU computes bf16 natively (fast) or emulates it (very slow)."""
    no = _up_front_no(platform.machine(), torch.backends.cpu.get_cpu_capability(),
                      os.environ.get("ONEDNN_MAX_CPU_ISA", ""), cpu_flags())
    if no is not None:
        return Bf16Support(False, no)
    slowdown = bf16_slowdown()
    if 1 / slowdown < NATIVE_MIN_RATIO:
        return Bf16Support(False, f"a bf16 matmul measured {slowdown:.0f}x slower than float32")
    return Bf16Support(True, "native bf16")


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 computes at least at float32's pace here (so it may be worth measuring)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16().native


def machine_summary() -> str:
    """One line for logs and benchmarks: the CPU's capability and whether bf16 is native."""
    support = cpu_bf16()
    return (f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"{'native bf16' if support.native else 'no native bf16 (' + support.why + ')'}")


def autocast(device: torch.device, dtype_name: str):
    amp = DTYPES[dtype_name]
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def _one_step(model: GPT, device: torch.device, dtype_name: str, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    with autocast(device, dtype_name):
        _, loss = model(x, x)
    loss.backward()
    return time.perf_counter() - t0


def measure_formats(model: GPT, device: torch.device, batch: int, step: Callable | None = None) -> dict[str, float]:
    """Seconds of one forward+backward step in float32 and in bf16: the fastest of repeats taken in
    turn (float32, bf16, bf16, float32, ...), so that another program busy on the same cores for a
    while slows both alike instead of the one timed during it. A format whose step alone takes more
    than PROBE_SECONDS counts as infinitely slow. `spread` is how far a format's repeats
    disagree (median over fastest): a busy machine shows in it."""
    step = step or _one_step
    state = torch.get_rng_state()  # measuring must not shift the training's random stream
    was_training = model.training
    model.eval()  # no dropout: the timing needs no randomness
    x = torch.randint(model.config.vocab_size, (batch, model.config.block_size), device=device)
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    started = time.perf_counter()
    try:
        for name in times:  # warm-ups, not counted
            if step(model, device, name, x) > PROBE_SECONDS:
                times[name] = [float("inf")]
        for round_ in range(MEASURE_ROUNDS):
            for name in (("float32", "bfloat16") if round_ % 2 == 0 else ("bfloat16", "float32")):
                if times[name] != [float("inf")]:
                    times[name].append(step(model, device, name, x))
            if time.perf_counter() - started > 2 * PROBE_SECONDS and round_ >= 1:
                break
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.set_rng_state(state)
    best = {name: min(t) for name, t in times.items()}
    spread = max((statistics.median(t) / min(t) for t in times.values() if min(t) < float("inf") and len(t) > 1),
                 default=1.0)  # the median, not the slowest: one late step is a hiccup, not a busy machine
    return {**best, "spread": spread}


def _undecided(figures: dict) -> bool:
    """Both formats too slow to time: the machine was busy (or tiny), which says nothing about bf16."""
    return figures["float32"] == figures["bfloat16"] == float("inf")


@dataclass
class DtypeChoice:
    """What `--dtype auto` chose on a CPU with native bf16, and from which figures."""

    dtype: str
    figures: dict  # float32 / bfloat16 seconds a step, batch, tokens a step, spread, date
    remembered: bool  # taken from an earlier measurement on this machine, for this shape

    def words(self) -> str:
        f = self.figures
        when = f"measured here on {f['date']}" if self.remembered else "measured just now"
        if _undecided(f):
            return (f"number format {self.dtype} (`dtype` auto, measured just now: a step of {f['tokens']:,} "
                    f"tokens took over {PROBE_SECONDS:g} s in both float32 and bfloat16, so another program "
                    f"is likely busy on these cores; not remembered, the next run measures again)")
        ratio = f["float32"] / f["bfloat16"] if f["bfloat16"] < float("inf") else 0.0
        kept = (f"Its repeats differed {f['spread']:.1f}x (a busy machine), so it is not remembered: the next "
                "run measures again" if f["spread"] > NOISY_SPREAD else
                f"Remembered in {cache_dir() / CHOICES_FILE}; `measure_dtype` measures again")
        return (f"number format {self.dtype} (`dtype` auto, {when}: a step of {f['tokens']:,} tokens took "
                f"{1000 * f['float32']:.1f} ms in float32, {1000 * f['bfloat16']:.1f} ms in bfloat16, "
                f"{ratio:.2f}x; bf16 needs {MIN_GAIN:g}x. {kept})")


def choose_dtype(model: GPT, device: torch.device, batch: int, remeasure: bool = False) -> DtypeChoice:
    """float32 or bfloat16 for this shape on this CPU: remembered, or measured and remembered.

    A measurement whose repeats disagree by more than NOISY_SPREAD (another program took the cores
    meanwhile) still decides this run, but is not remembered: the next run measures again."""
    key, choices = choice_key(model, batch), read_choices()
    kept = choices.get(key)
    if not remeasure and isinstance(kept, dict) and kept.get("dtype") in ("float32", "bfloat16"):
        return DtypeChoice(kept["dtype"], kept, remembered=True)
    f = measure_formats(model, device, batch)
    dtype = "bfloat16" if f["bfloat16"] < float("inf") and f["float32"] / f["bfloat16"] >= MIN_GAIN else "float32"
    figures = {"dtype": dtype, "float32": f["float32"], "bfloat16": f["bfloat16"], "batch": batch,
               "tokens": batch * model.config.block_size, "spread": round(f["spread"], 3),
               "date": time.strftime("%Y-%m-%d")}
    if f["spread"] <= NOISY_SPREAD and not _undecided(f):
        choices[key] = figures
        remember_choices(choices)
    elif key in choices:
        del choices[key]
    return DtypeChoice(dtype, figures, remembered=False)


def resolve_dtype(name: str, device: torch.device, model: GPT, batch_size: int,
                  warn: Callable[[str], None] | None = None, tell: Callable[[str], None] | None = None,
                  remeasure: bool = False) -> str:
    """The dtype to train in, as a name: `auto` becomes float32, bfloat16 or float16. `tell` hears
    how an auto choice was made (the figures), `warn` what will be slow."""
    if name == "float16" and device.type != "cuda":
        raise SettingError("dtype", "float16 is for CUDA GPUs; use bfloat16 or float32 here")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SettingError("dtype", "bfloat16 is not supported by this GPU; use float16 or float32")
    if name == "bfloat16" and device.type == "cpu" and not cpu_bf16().native and warn is not None:
        warn(f"warning: this CPU has no native bf16 ({cpu_bf16().why}); a bf16 matmul measured "
             f"{bf16_slowdown():.0f}x slower than float32 here, so training in bfloat16 will be slow "
             "(`dtype` auto or float32 trains at full speed)")
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type != "cpu" or not cpu_bf16().native:
        return "float32"  # MPS: float32 is the safe default there (NaN reports with half precision)
    choice = choose_dtype(model, device, timing_batch(model, batch_size), remeasure)
    if tell is not None:
        tell(choice.words())
    return choice.dtype


def timing_batch(model: GPT, batch_size: int) -> int:
    """Small batches are dominated by per-operation overheads, which bf16 adds to: time the real
    batch where it is cheap, at least 4 rows of a long context otherwise."""
    return min(batch_size, max(4, TIMING_TOKENS // model.config.block_size))


class DtypeRecheck:
    """Measures a remembered choice again when the run's own steps contradict its figures.

    A run computes more per step than the measurement (the optimiser, the data), so its time per
    token can only be above the remembered one; below RECHECK_BELOW of it, the remembered figure was
    taken while something else slowed the machine, and the choice it made is measured again."""

    def __init__(self, model: GPT, device: torch.device, batch_size: int, dtype: str):
        self.model, self.device, self.dtype = model, device, dtype
        self.batch = timing_batch(model, batch_size)
        kept = read_choices().get(choice_key(model, self.batch))
        self.kept = kept if isinstance(kept, dict) and kept.get("dtype") == dtype else None
        self.start: tuple[int, float] | None = None
        self.done = self.kept is None or device.type != "cpu"

    def after_step(self, step: int, train_seconds: float, tokens_per_step: int) -> DtypeChoice | None:
        """A new choice where the measurement taken again differs; None otherwise (and from then on)."""
        if self.done:
            return None
        if self.start is None:  # the first step warms up: timed from the next
            self.start = (step, train_seconds)
            return None
        steps, seconds = step - self.start[0], train_seconds - self.start[1]
        if steps < RECHECK_STEPS or seconds < RECHECK_SECONDS:
            return None
        self.done = True
        run_per_token = seconds / (steps * tokens_per_step)
        kept_per_token = self.kept[self.dtype] / self.kept["tokens"]
        if run_per_token >= RECHECK_BELOW * kept_per_token:
            return None
        choice = choose_dtype(self.model, self.device, self.batch, remeasure=True)
        choice.figures["run_ms_per_token"] = 1000 * run_per_token
        choice.figures["kept_ms_per_token"] = 1000 * kept_per_token
        return choice


def decoding_dtype_candidates(device: torch.device) -> tuple[torch.dtype, ...]:
    """The weight formats worth timing for decoding here: float32; float16 on any CPU (its matrix-
    vector kernel converts as it reads, with F16C on AVX2: half the bytes of a step bound by reading
    its weights); bf16 only where it is native (emulated, a prefill through it is ~100x slower)."""
    if device.type != "cpu":
        return (torch.float32,)
    return (torch.float32, torch.float16) + ((torch.bfloat16,) if fast_bf16(device) else ())


# Decoding one token at a time is overhead-bound below this width: 16-bit weights only add conversions.
HALF_DECODING_MIN_WIDTH = 256


def decoding_dtype(device: torch.device, width: int, seconds_per_token) -> torch.dtype:
    """The format of the matrices for generating on `device` with a model `width` wide: bf16 on a
    GPU that has it; on a CPU, float32 unless the model is wide enough for the weights' bytes to
    matter and `seconds_per_token(dtype)` (a bounded timing) says a 16-bit format is faster."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    candidates = decoding_dtype_candidates(device)
    if device.type != "cpu" or width < HALF_DECODING_MIN_WIDTH or len(candidates) == 1:
        return torch.float32
    timings = {dtype: seconds_per_token(dtype) for dtype in candidates}
    return min(timings, key=timings.get)


# The measured choice is remembered per machine and model shape, with its figures, so that the same
# seed on the same machine trains the same model even when a noisy timing would have tipped the
# other way. A measurement taken on a busy machine is not remembered (its repeats disagree), and
# one that slipped through is measured again when a run's own steps are faster than its figures. The key
# names the CPU's capability and oneDNN's cap too: the same processor told to act as an AVX2-only
# one (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA) is another machine for this purpose.
CHOICES_FILE = "dtype-choices.json"


def choice_key(model: GPT, batch: int) -> str:
    c = model.config
    shape = (f"{c.n_layer}x{c.n_embd}/{c.n_head} T{c.block_size} B{batch} vocab {c.vocab_size} {c.activation} "
             f"{c.position} {c.norm}{' qk_norm' if c.qk_norm else ''}")
    return f"{machine_key()}: {shape}"


def machine_key() -> str:
    """What a remembered timing holds for: the CPU as torch uses it, its threads, torch's version."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return (f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}{', oneDNN ' + isa if isa else ''}), "
            f"{os.cpu_count()} cpus, {torch.get_num_threads()} threads, torch {torch.__version__}")


def read_choices(name: str = CHOICES_FILE) -> dict:
    """A file of remembered measurements (by machine and shape) in the cache folder; {} if none."""
    try:
        choices = json.loads((cache_dir() / name).read_text())
    except (OSError, ValueError):
        return {}
    return choices if isinstance(choices, dict) else {}


def remember_choices(choices: dict, name: str = CHOICES_FILE) -> None:
    try:
        atomic_write_bytes(cache_dir() / name, json.dumps(choices, indent=1).encode())
    except OSError:
        pass  # a read-only cache only costs a measurement next time
