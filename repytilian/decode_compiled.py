"""Decoding steps built ahead of time as native functions: the model's own forward pass for one
new token a row, exported (torch.export) and compiled by AOTInductor into a shared library that
holds the weights. Two of them: one row (batch 1), and any number of rows (a server's batches).

Why: at batch 1 a small model's step is the cost of its ~130 PyTorch calls (2-25 us each), not
their arithmetic. Built, the step is one call, Inductor's matrix kernels are timed against MKL's
for each shape and the faster kept (max_autotune), and the weights are constants. 2-core AVX2
EPYC (torch 2.13): `bpe` 95 us a step against ~650 eager and 436 through torch.compile; `hyper`
1.46 ms against 2.4 (float16) eager; v2c's 8 rows 295 us against 1,073 eager. The batch step's
shapes are not fixed, so one row through it costs more (bpe 162 us) than through the one-row step.

What it costs: 20-40 s on 2 cores the first time for a model's weights on a machine (the batch and
prompt steps as long again each), then kept in `$REPYTILIAN_HOME/decoding-steps/<digest>.so` (and
`-rows.so`, `-prompt.so`; the digest of the weights, the config, torch's version and this CPU; the
KEEP models used last) and loaded in ~10 ms (plus ~25 ms hashing 44 MB of weights). Built only when
asked (`--compile`, `engine.compile = True`; the batch step by `serve --compile`), used whenever
found. It is native code built here from the model's weights: never read from a model folder.

The blocks' matrices: float32 below 256 wide (runtime/precision.HALF_DECODING_MIN_WIDTH), as the
eager decoder holds them there, so that compiling the shipped models never changes their text;
from 256 wide bf16 where the CPU computes it natively (activations, the cache and the head stay
float32): a step reads every weight once (`hyper` modern 691 us a step against 1,077 in float32,
2-core Xeon with AMX, 2026-12-04), and the text can then part from eager decoding's (which times
its own formats) after some tokens. With AMX a 128-wide step in bf16 is 15-25% faster (v2c, bpe,
v3c: 9,155 / 8,636 / 4,313 tokens/s against 7,781 / 7,107 / 3,447), but over 300 tokens 1 / 3 / 4
of 6 seeds kept their eager text and greedy text parted on two; in float32 all did. A request's
`dtype` (float32, or bf16 where native) gets a step in that format. A float32 step built before is
used until the bf16 one is built. The one-row step's kernels differ from the batch step's, so a
server's batches take a row alone through the batch step too (`same_as_batches`), which gives a
row the same numbers whatever else is in the batch.

The graph is static but for the rows, the span attended over and (the prompt step) the new tokens:
each row of the KV cache is passed whole with its position, and the attention masks what lies
beyond (`FixedCache`), so one build serves every position. A build that fails is a note, once.

How it is called (runtime/native_step.py): the batch and prompt steps through the library's C
interface, which lets other threads run meanwhile; the one-row step through torch's own runner (`load`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .attention import KVCache
from .decode_loop import TokenLoop
from .events import note
from .model import GPT
from .runtime.cpu import cpu_name
from .runtime.fileio import atomic_output
from .runtime.native_step import load
from .runtime.paths import cache_dir
from .sampling import SamplingOptions

KEEP = 8  # models whose built steps are kept in the cache folder (6-50 MB a step for the shipped shapes)
ROWS_EXAMPLE, MAX_ROWS = 8, 4096  # the batch step: exported with 8 rows, runs any count from 2 to 4,096
MIN_SPAN = 2  # export makes sizes 0 and 1 constants: a span is at least 2 positions
PROMPT_EXAMPLE = 3  # a prompt's tokens at once (prompt steps): exported with 3, runs 2 up to the block
KEPT_VIEWS = 256  # row ranges of a cache whose views CompiledStep._rows keeps
# A short prompt of a small model goes in a position at a time through the built step: measured on
# a 2-core AVX2 EPYC, 5 tokens of v2c 0.54 ms against 1.1 ms in one eager pass (v3c 0.9 against 2.2);
# from about 10 tokens, or for wide models (hyper: 1.4 ms a built step), the eager pass is faster.
PREFILL_TOKENS, SMALL_MODEL_BYTES = 8, 16 << 20
FORMAT = 2  # part of every digest: a change to what is built here builds again (2: the attention's span)
# Freezing makes the weights constants (laid out once, at build time); max_autotune times
# Inductor's C++ matrix kernels against MKL's per shape (bpe: 95 against 257 us a step with MKL's).
INDUCTOR_OPTIONS = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                    # its timings are not printed (the library prints nothing)
                    "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}


class FixedCache:
    """One step of one token per row into caches of static shape (rows, block, heads, head size),
    each row at its own position (`pos`, (rows,)): the interface GPT.forward asks of a cache.
    Attention reads the first `span` positions of each row (the longest row's, at least): a size
    given with the inputs (its length is what counts), so a step early in the window does not read
    the whole block (v2c's batch step at 8 rows: 22 us a row with a span of 64, 9 with 16)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], pos: torch.Tensor, span: torch.Tensor,
                 new: int = 1):
        self.keys, self.values = keys, values
        rows, block = keys[0].shape[:2]
        self.span = span.size(0)
        self.start = pos[:, None]  # (rows, 1)
        positions = self.start + torch.arange(new, device=pos.device)  # (rows, new)
        self.flat = (positions + block * torch.arange(rows, device=pos.device)[:, None]).flatten()
        unseen = torch.arange(self.span, device=pos.device) > positions[..., None]  # (rows, new, span)
        self.mask = torch.zeros(unseen.shape, device=pos.device).masked_fill(unseen, float("-inf"))[:, None]

    def check_room(self, new: int) -> None:  # the caller keeps to the block
        pass

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = k.shape
        keys, values = self.keys[layer], self.values[layer]
        keys.view(-1, nh * hs).index_copy_(0, self.flat, k.transpose(1, 2).reshape(B * T, nh * hs))
        values.view(-1, nh * hs).index_copy_(0, self.flat, v.transpose(1, 2).reshape(B * T, nh * hs))
        # Written out, not F.scaled_dot_product_attention: compiled, this is one fused loop per layer
        # (measured on a 2-core AVX2 EPYC, bpe: 442-458 us a step against 478-481 through the
        # CPU's flash-attention kernel, which is made for long queries). The span is cut after the
        # transposes: cut before, export asks whether the cut rows are contiguous (span == block)
        # and refuses the dynamic span.
        keys, values = keys.permute(0, 2, 3, 1)[..., :self.span], values.transpose(1, 2)[:, :, :self.span]
        scores = torch.matmul(q * q.size(-1) ** -0.5, keys) + self.mask
        return torch.matmul(scores.softmax(dim=-1), values)

    def advance(self, new: int) -> None:  # the caller moves the position on
        pass


class _Step(nn.Module):
    """What is exported: keys, values (a (rows, block, heads, head size) tensor a layer), the new
    token of each row (rows, 1), their positions (rows,) and a tensor as long as the attention's
    span (FixedCache) -> the next token's logits (rows, vocab)."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, keys: list[torch.Tensor], values: list[torch.Tensor], idx: torch.Tensor,
                pos: torch.Tensor, span: torch.Tensor) -> torch.Tensor:
        logits, _ = self.model(idx, last_only=True, cache=FixedCache(keys, values, pos, span, idx.size(1)))
        return logits[:, -1, :]


@functools.cache
def _machine() -> str:
    return json.dumps({"format": FORMAT, "options": INDUCTOR_OPTIONS, "torch": torch.__version__, "cpu": cpu_name(),
                       "capability": torch.backends.cpu.get_cpu_capability()}, sort_keys=True)


def step_dtype(model: GPT) -> torch.dtype:
    """The format of a built step's block matrices here by default (module docstring)."""
    from .runtime.precision import HALF_DECODING_MIN_WIDTH, fast_bf16

    native = fast_bf16(torch.device("cpu"))
    return torch.bfloat16 if model.config.n_embd >= HALF_DECODING_MIN_WIDTH and native else torch.float32


def _can_build(dtype: torch.dtype) -> bool:
    """Whether a step asked for in `dtype` can be built here: float32, or bf16 where it is native."""
    from .runtime.precision import fast_bf16

    return dtype == torch.float32 or (dtype == torch.bfloat16 and fast_bf16(torch.device("cpu")))


def step_digest(model: GPT, dtype: torch.dtype = torch.float32) -> str:
    """What names a built step: the weights, the config, the matrices' format, torch's version and this CPU."""
    matrices = "" if dtype == torch.float32 else f"matrices {dtype}"  # float32 steps keep their names
    h = hashlib.sha256((_machine() + json.dumps(asdict(model.config), sort_keys=True) + matrices).encode())
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name} {tensor.dtype} {tensor.numel()}".encode())
        h.update(tensor.view(torch.uint8).numpy())
    return h.hexdigest()[:40]


def build(model: GPT, rows: int | None, path: Path, dtype: torch.dtype = torch.float32, prompt: bool = False) -> None:
    """Export the step for one row (`rows` None), for any number of rows from 2 on, or (`prompt`)
    for 2 up to a block's tokens into one row, the blocks' matrices in `dtype`, and compile it into
    `path` (atomically: a crash leaves no half-built file)."""
    import torch._inductor as inductor  # the compiler: only when a step is built

    if dtype != torch.float32:
        from .decode import for_decoding  # decode.py imports this module

        model = for_decoding(model, dtype)  # the eager decoder's structure, its matrices in 16 bits
    example = GPT.new_cache(model, rows or 1)
    idx, pos = torch.zeros(rows or 1, 1, dtype=torch.long), torch.zeros(rows or 1, dtype=torch.long)
    block = model.config.block_size
    # an example span unlike the other sizes (export would take two equal example sizes as one)
    span = torch.zeros(block - 1 if block - 1 not in (ROWS_EXAMPLE, PROMPT_EXAMPLE) else block)
    spans = {0: torch.export.Dim("span", min=MIN_SPAN, max=block)} if block > MIN_SPAN else None
    n = {0: torch.export.Dim("rows", min=2, max=MAX_ROWS)} if rows else None
    tokens = None
    if prompt:
        idx = torch.zeros(1, PROMPT_EXAMPLE, dtype=torch.long)
        tokens = {1: torch.export.Dim("tokens", min=2, max=block)}
    dynamic = ([n] * len(example.keys), [n] * len(example.values), tokens or n, n, spans)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the compiler's own deprecation warnings are not the user's
        program = torch.export.export(_Step(model).eval(), (example.keys, example.values, idx, pos,
                                                            span if spans else torch.zeros(block)),
                                      dynamic_shapes=dynamic)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as work:
            package = Path(work) / "step.pt2"
            options = dict(INDUCTOR_OPTIONS)  # a copy: it adds to what it is given
            inductor.aoti_compile_and_package(program, package_path=str(package), inductor_configs=options)
            # The package is a zip around one shared library (weights inside): kept as that library,
            # which loads in ~3 ms with nothing unpacked into /tmp (the package loader leaves its
            # unpacked copy there when a process ends without freeing it).
            with zipfile.ZipFile(package) as zipped, atomic_output(path, suffix=".so") as tmp:
                [library] = [name for name in zipped.namelist() if name.endswith(".so")]
                tmp.write_bytes(zipped.read(library))


def _keep_newest(folder: Path, keep: int) -> None:
    """The built steps of the `keep` models used last (a model's one-row, batch and prompt steps
    go together, by the newest of them); the others' files are removed."""
    models: dict[str, list[Path]] = {}
    for p in folder.glob("*.so"):
        if not p.name.startswith("."):  # not one being written
            models.setdefault(p.name.removesuffix(".so").split("-")[0], []).append(p)
    newest = sorted(models.values(), key=lambda files: max(_used(p) for p in files), reverse=True)
    for files in newest[keep:]:
        for old in files:
            old.unlink(missing_ok=True)


def _used(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # removed meanwhile by another process
        return 0.0


def compiled_step(model: GPT, compile: bool | None, dtype: torch.dtype | None = None) -> CompiledStep | None:
    """The step to decode `model` through: built if missing where `compile` is True, only one
    already built where it is None (the default: finding it costs a hash of the weights, ~25 ms
    for 44 MB), none where it is False or the model is not on a CPU. Its matrices are in `dtype`
    where a step can be built in it here (else None: eager decoding), by default in the eager
    decoder's format (step_dtype), or in float32 where only such a step was built before."""
    if compile is False:
        return None
    if model.lm_head.weight.device.type != "cpu":
        if compile:
            note("note: the decoding step is built for CPUs only; decoding without compiling")
        return None
    if dtype is not None and not _can_build(dtype):
        return None
    preferred = dtype or step_dtype(model)
    step = CompiledStep(model, build_missing=bool(compile), dtype=preferred)
    if compile or step.found():
        return step
    if dtype is None and preferred != torch.float32:
        older = CompiledStep(model, build_missing=False, dtype=torch.float32)
        return older if older.found() else None
    return None


class _Library:
    """One built step: its file and, once loaded, its function of the flattened inputs."""

    def __init__(self, path: Path, rows: int | None, dtype: torch.dtype = torch.float32, prompt: bool = False):
        self.path, self.rows, self.dtype = path, rows, dtype  # rows: None for one row, else the example's count
        self.prompt = prompt  # a prompt's tokens at once (one row)
        self.run: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None
        self.failed = False

    def ready(self, model: GPT, build_missing: bool) -> bool:
        if self.run is not None or self.failed:
            return self.run is not None
        if not self.path.exists() and not build_missing:
            return False
        what = "decoding step" + (" for prompts" if self.prompt else "" if self.rows is None else " for batches")
        t0, built = time.perf_counter(), False
        try:
            if not self.path.exists():
                note(f"compiling the {what} for this model: about half a minute the first time, "
                     f"kept for later runs in {self.path.parent}", kind="info")
                build(model, self.rows, self.path, self.dtype, self.prompt)
                built = True
            self.run = load(self.path, let_go=self.rows is not None or self.prompt)  # a server's event loop runs beside
            os.utime(self.path)  # recently used: kept before older ones
            _keep_newest(self.path.parent, KEEP)
        except Exception as e:  # noqa: BLE001 - no compiler, an unsupported layer: decode without it
            self.failed = True
            note(f"note: the {what} could not be {'compiled' if built or build_missing else 'loaded'} "
                 f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}); decoding without compiling")
            return False
        if built:
            note(f"compiled the {what} in {time.perf_counter() - t0:.1f} s", kind="info")
        return True


class CompiledStep:
    """`step(idx (B, 1), cache)` -> logits (B, vocab) of the cache's first B rows, each at its own
    length, where `serves` says a built step takes them. Three libraries: one row (`one`, batch 1,
    the fastest), any number of rows from 2 on (`rows`, a server's batches: its shapes are not
    fixed, so its matrix kernels are not as fast for one row), and a prompt's tokens at once into
    one row (`prompt`: a request joining a server's batch, a window sliding on; v2c, 31 tokens:
    266 us against 1,040 eagerly, 2-core Xeon with AMX, 2026-12-04). `prepare` loads them from the
    cache folder, or builds them there (`build_missing`; the batch step only when asked for: a server's)."""

    def __init__(self, model: GPT, build_missing: bool = True, folder: Path | None = None,
                 dtype: torch.dtype | None = None):
        self.model, self.build_missing = model, build_missing
        self.dtype = dtype or step_dtype(model)  # of the blocks' matrices
        folder = folder or cache_dir() / "decoding-steps"
        digest = step_digest(model, self.dtype)
        self.one = _Library(folder / f"{digest}.so", None, self.dtype)
        self.rows = _Library(folder / f"{digest}-rows.so", ROWS_EXAMPLE, self.dtype)
        self.prompt = _Library(folder / f"{digest}-prompt.so", None, self.dtype, prompt=True)
        self.block = model.config.block_size
        self.pos = torch.zeros(1, dtype=torch.long)
        self.span = torch.zeros(self.block)  # its first `span` positions give the attention's span
        self._views: tuple = (None, {})  # the cache last seen, and views of its rows by (first row, row count)
        self.small = sum(p.numel() for p in model.parameters()) * 4 <= SMALL_MODEL_BYTES
        self._loops: dict[Path, TokenLoop | None] = {}  # a library's, made at first use (None where it cannot be)
        self.same_as_batches = False  # a row alone through the batch step too (module docstring)

    def found(self) -> bool:
        """Whether either library is already built here."""
        return self.one.path.exists() or self.rows.path.exists()

    def prepare(self, rows: bool = False) -> bool:
        """Whether a step is ready: the one-row step, and with `rows` the one for batches too
        (loaded, or built now where asked); where one cannot be had, a note says why."""
        one = self.one.ready(self.model, self.build_missing)
        many = self.rows.ready(self.model, self.build_missing and rows)
        # (not where the one-row step failed to build: the same failure, said once; nor for a model of
        # so short a context that it has no use for it)
        if self.block > PROMPT_EXAMPLE and not self.one.failed:
            self.prompt.ready(self.model, self.build_missing)
        return one or many

    def serves(self, count: int, end: int) -> bool:
        """Whether a built step takes `count` rows whose longest reaches position `end` - 1."""
        return self._library(count).run is not None and end <= self.block and count <= MAX_ROWS

    def prefills(self, tokens: int) -> bool:
        """Whether a prompt of `tokens` goes in through a built step: the prompt step, or a position
        at a time through the step where that is faster than one eager pass (PREFILL_TOKENS)."""
        return self.prompt.run is not None or (tokens <= PREFILL_TOKENS and self.small)

    def takes_prompt(self, end: int) -> bool:
        """Whether the prompt step takes a row's tokens up to position `end` - 1."""
        return self.prompt.run is not None and end <= self.block

    def prompt_step(self, idx: torch.Tensor, cache: KVCache, row: int) -> torch.Tensor:
        """idx (1, T), T >= 2: the next tokens of row `row` -> the last one's logits (1, vocab)."""
        length = cache.lengths[row]
        return self.prompt.run([*self._rows(cache, row, 1), idx.contiguous(), torch.tensor([length]),
                                self._span(length + idx.size(1))])[0]

    def __call__(self, idx: torch.Tensor, cache: KVCache, first: int = 0) -> torch.Tensor:
        """idx (B, 1): the next token of rows first..first+B-1, each at its own length -> logits
        (B, vocab). The caller has asked `serves` first (past the block, the library would read
        out of bounds: the eager pass says so instead)."""
        count = idx.size(0)
        lengths = cache.lengths[first:first + count]
        pos = self.pos.fill_(lengths[0]) if count == 1 else torch.tensor(lengths, dtype=torch.long)
        # contiguous: the library reads its inputs as laid out when it was built, and checks nothing
        return self._library(count).run([*self._rows(cache, first, count), idx.contiguous(), pos,
                                          self._span(max(lengths) + 1)])[0]

    def steps(self, lasts: list[int], cache: KVCache, count: int, end: int | None,
              samplings: list[SamplingOptions], generators: list[torch.Generator | None], never: torch.Tensor | None,
              logprobs: bool) -> tuple[list[list[int]], list[list[float]] | None] | None:
        """Up to `count` steps of the cache's first len(lasts) rows, whose last tokens `lasts` it
        does not hold yet, each token chosen in C (decode_loop.py) as the rows' `samplings` say:
        each step's tokens, a row each, and (`logprobs`) their log-probabilities; fewer once a
        window is full or every row has given `end`. None where the step for these rows (one row,
        or a batch's) or its loop is missing, or a window is full already."""
        rows, lengths = len(lasts), cache.lengths[:len(lasts)]
        library = self._library(rows)
        if not self.serves(rows, max(lengths) + 1):
            return None
        if library.path not in self._loops:
            self._loops[library.path] = TokenLoop.make(library.path, self.model.config.vocab_size, library.run)
        loop = self._loops[library.path]
        if loop is None:
            return None
        inputs = [*self._rows(cache, 0, rows), torch.tensor([[n] for n in lasts]), torch.tensor(lengths)]
        # never past a window: a seeded row's generator draws for exactly the steps made
        count = min(count, self.block - max(lengths))
        made = loop.steps(inputs, self.span, MIN_SPAN, count, end, samplings, generators, never, logprobs)
        cache.lengths[:rows] = [n + len(made[0]) for n in lengths]
        return made

    def _library(self, count: int) -> _Library:
        """The step for `count` rows: the batch step, or the one-row step for a row alone unless
        `same_as_batches` (a server's batches) and the batch step is loaded."""
        return self.rows if count > 1 or (self.same_as_batches and self.rows.run is not None) else self.one

    def _rows(self, cache: KVCache, first: int, count: int) -> list[torch.Tensor]:
        """The keys and values of rows first..first+count-1, a layer each: views kept for the cache
        (microseconds a call to make; a batch's rows and each joining row's prompt take turns)."""
        if self._views[0] is not cache or len(self._views[1]) >= KEPT_VIEWS:
            self._views = (cache, {})
        views = self._views[1]
        if (first, count) not in views:
            views[first, count] = [t.narrow(0, first, count) for t in (*cache.keys, *cache.values)]
        return views[first, count]

    def _span(self, end: int) -> torch.Tensor:
        """The span input for rows whose longest ends at position `end` - 1 (FixedCache)."""
        return self.span[:max(MIN_SPAN, end)] if self.block > MIN_SPAN else self.span
