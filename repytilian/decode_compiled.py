"""A decoding step built ahead of time as one native function: the model's own forward pass for
one token of one sequence, exported (torch.export) and compiled by AOTInductor into a shared
library that holds the weights.

Why: at batch 1 a small model's step is the cost of its ~130 PyTorch calls (2-25 us each), not
their arithmetic, and MKL's matrix-vector products are slow on AMD's CPUs (128x1024: 20 us where
numpy's OpenBLAS takes 9). Built this way the step is one call from Python, Inductor's own
matrix kernels are timed against MKL's for each shape and the faster kept (max_autotune), and the
weights are constants. Measured on a 2-core AVX2 EPYC (torch 2.13): the shipped `bpe` model 95 us
a step against ~650 eager and 436 through torch.compile (whose Python wrappers and guards alone
cost ~150 us a call); the `hyper` shape 1.46 ms against 2.4 (float16) eager. docs/benchmarks.md
has the figures against llama.cpp.

What it costs: building takes 30-40 s on 2 cores the first time for a model's weights on a
machine; the library is then kept, and a later run loads it in about 10 ms (plus hashing the
weights to find it: ~25 ms for 44 MB). So it is asked for (`--compile`, `engine.compile`), never
on by default: the first time it pays after about 35 s / (0.5 ms saved a token) = 70,000 tokens;
once kept, after a few hundred.

Where it is kept: `$REPYTILIAN_HOME/decoding-steps/<digest>.pt2`, named by the digest of the
weights, the config, torch's version and this CPU, the newest KEEP of them. It is native code
built on this machine from the model's own weights: never read from a model folder, never shared
(model folders hold weights only, loaded without running any code).

The graph is static: the KV cache's row is passed whole, the position as a tensor, and the
attention masks what lies beyond it, so one build serves every position. `FixedCache` gives the
model's forward pass the cache interface (attention.KVCache's) for that. A build that fails is
reported once (a note) and decoding goes on without it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .attention import KVCache
from .events import note
from .model import GPT
from .runtime.cpu import cpu_name
from .runtime.fileio import atomic_output
from .runtime.paths import cache_dir

KEEP = 8  # built steps kept in the cache folder (6-50 MB each for the shipped shapes)
FORMAT = 1  # part of every digest: a change to what is built here builds again
# Freezing makes the weights constants (laid out once, at build time); max_autotune times
# Inductor's C++ matrix kernels against MKL's per shape (bpe: 95 against 257 us a step with MKL's).
INDUCTOR_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                    # its timings are not printed (the library prints nothing)
                    "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


class FixedCache:
    """One step of one token per row into caches of static shape (rows, block, heads, head size),
    each row at its own position (`pos`, (rows,)): the interface GPT.forward asks of a cache."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], pos: torch.Tensor):
        self.keys, self.values = keys, values
        rows, block = keys[0].shape[:2]
        self.start = pos[:, None]  # (rows, 1)
        self.flat = pos + block * torch.arange(rows, device=pos.device)
        unseen = torch.arange(block, device=pos.device) > pos[:, None]  # (rows, block)
        self.mask = torch.zeros(unseen.shape, device=pos.device).masked_fill(unseen, float("-inf"))[:, None, None]

    def check_room(self, new: int) -> None:  # the caller keeps to the block
        pass

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, nh, _, hs = k.shape
        keys, values = self.keys[layer], self.values[layer]
        keys.view(-1, nh * hs).index_copy_(0, self.flat, k.reshape(B, nh * hs))
        values.view(-1, nh * hs).index_copy_(0, self.flat, v.reshape(B, nh * hs))
        # Written out, not F.scaled_dot_product_attention: compiled, this is one fused loop per layer
        # (measured on a 2-core AVX2 EPYC, bpe: 442-458 us a step against 478-481 through the
        # CPU's flash-attention kernel, which is made for long queries).
        scores = torch.matmul(q * q.size(-1) ** -0.5, keys.permute(0, 2, 3, 1)) + self.mask
        return torch.matmul(scores.softmax(dim=-1), values.transpose(1, 2))

    def advance(self, new: int) -> None:  # the caller moves the position on
        pass


class _Step(nn.Module):
    """What is exported: keys, values (a (1, block, heads, head size) tensor a layer), the new
    token (1, 1) and its position (1,) -> the next token's logits (1, vocab)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, keys: list[torch.Tensor], values: list[torch.Tensor], idx: torch.Tensor,
                pos: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(idx, last_only=True, cache=FixedCache(keys, values, pos))
        return logits[:, -1, :]


@functools.cache
def _machine() -> str:
    return json.dumps({"format": FORMAT, "options": INDUCTOR_OPTIONS, "torch": torch.__version__, "cpu": cpu_name(),
                       "capability": torch.backends.cpu.get_cpu_capability()}, sort_keys=True)


def step_digest(model: GPT) -> str:
    """What names a built step: the weights, the config, torch's version and this CPU."""
    h = hashlib.sha256((_machine() + json.dumps(asdict(model.config), sort_keys=True)).encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name} {tensor.dtype} {tensor.numel()}".encode())
        h.update(tensor.view(torch.uint8).numpy())
    return h.hexdigest()[:40]


def build(model: GPT, example: list[torch.Tensor], path: Path) -> None:
    """Export the step and compile it into `path` (atomically: a crash leaves no half-built file)."""
    import torch._inductor as inductor  # the compiler: only when a step is built

    layers = len(model.transformer.h)
    keys, values, idx, pos = example[:layers], example[layers:2 * layers], example[-2], example[-1]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the compiler's own deprecation warnings are not the user's
        program = torch.export.export(_Step(model).eval(), (keys, values, idx, pos))
        with atomic_output(path, suffix=".pt2") as tmp:
            options = dict(INDUCTOR_OPTIONS)  # a copy: it adds to what it is given
            inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=options)


def load(path: Path) -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """The built step's function of its flattened inputs (keys..., values..., idx, pos)."""
    try:  # torch's own loader, without importing the compiler (1.2 s) to reach it
        return torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1).run
    except (AttributeError, TypeError):  # a torch whose loader is called otherwise
        import torch._inductor as inductor

        return inductor.aoti_load_package(str(path)).loader.run


def _keep_newest(folder: Path, keep: int) -> None:
    built = sorted(folder.glob("*.pt2"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in built[keep:]:
        old.unlink(missing_ok=True)


def compiled_step(model: GPT, compile: bool | None) -> CompiledStep | None:
    """The step to decode `model` through: built if missing where `compile` is True, only one
    already built where it is None (the default: finding it costs a hash of the weights, ~25 ms
    for 44 MB), none where it is False or the model is not on a CPU."""
    if compile is False:
        return None
    if model.lm_head.weight.device.type != "cpu":
        if compile:
            note("note: the decoding step is built for CPUs only; decoding without compiling")
        return None
    step = CompiledStep(model, build_missing=bool(compile))
    return step if compile or step.path.exists() else None


class CompiledStep:
    """`step(idx (1, 1), position, cache)` -> logits (1, vocab) of the cache's first row, or None
    where it could not be had. `prepare` loads the model's step from the cache folder, or builds it
    there (`build_missing`)."""

    def __init__(self, model: GPT, build_missing: bool = True, folder: Path | None = None):
        self.model, self.build_missing = model, build_missing
        self.folder = folder or cache_dir() / "decoding-steps"
        self.path = self.folder / f"{step_digest(model)}.pt2"
        self.run: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None
        self.failed = False
        self.start_seconds: float | None = None  # what loading or building it took
        self.pos = torch.zeros(1, dtype=torch.long)
        self._cache, self._rows = None, []  # the cache last seen, its first row's tensors

    def __call__(self, idx: torch.Tensor, position: int, cache: KVCache) -> torch.Tensor | None:
        if self.run is None and not self.prepare(cache):
            return None
        if cache is not self._cache:
            self._cache, self._rows = cache, [t.narrow(0, 0, 1) for t in (*cache.keys, *cache.values)]
        self.pos.fill_(position)
        return self.run([*self._rows, idx, self.pos])[0]

    def prepare(self, cache: KVCache) -> bool:
        """Whether the step is ready (loaded, or built now); False, with a note, where it cannot be."""
        if self.run is not None or self.failed:
            return self.run is not None
        t0 = time.perf_counter()
        example = [t.narrow(0, 0, 1) for t in (*cache.keys, *cache.values)]
        example += [torch.zeros(1, 1, dtype=torch.long), self.pos]
        built = False
        try:
            if not self.path.exists() and self.build_missing:
                note("compiling the decoding step for this model: about half a minute the first time, "
                     f"kept for later runs in {self.folder}", kind="info")
                build(self.model, example, self.path)
                built = True
            self.run = load(self.path)
            os.utime(self.path)  # recently used: kept before older ones
            _keep_newest(self.folder, KEEP)
        except Exception as e:  # noqa: BLE001 - no compiler, an unsupported layer: decode without it
            self.failed = True
            note(f"note: the decoding step could not be {'compiled' if self.build_missing else 'loaded'} "
                 f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}); decoding without compiling")
            return False
        self.start_seconds = time.perf_counter() - t0
        if built:
            note(f"compiled the decoding step in {self.start_seconds:.1f} s", kind="info")
        return True
