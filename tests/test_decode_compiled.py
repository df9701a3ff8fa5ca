"""The decoding step built ahead of time (decode_compiled.py): the same text as eager decoding,
built once per model and machine and found again, a clear note where it cannot be built."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import ROOT, TINY_TEXT, run_script

from repytilian import decode_compiled
from repytilian.decode import choose_dtype
from repytilian.engine import Request, Token
from repytilian.events import notes_to
from repytilian.language_model import LanguageModel
from repytilian.model import GPT, ModelConfig
from repytilian.runtime.cpu import cpu_flags
from repytilian.sampling import SamplingOptions
from repytilian.store.folder import save_model_dir
from repytilian.tokenizers import tokenizer_class

# Builds the batch step of the model folder argv[1] with the compiler options of argv[2] (the fixture's:
# the same options, the same digest), printing its notes
_BUILD_ROWS = """
import json, sys
from repytilian import decode_compiled, load_model
from repytilian.events import notes_to
decode_compiled.INDUCTOR_OPTIONS = json.loads(sys.argv[2])
model = load_model(sys.argv[1]).model
with notes_to(lambda n: print(n.text, flush=True)):
    step = decode_compiled.CompiledStep(model)
    assert step.rows.ready(model, build_missing=True)
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny model of the modern layout (rotary positions, RMSNorm, SwiGLU), saved as a folder,
    its step built once into a cache folder the module's tests share (a build takes ~20 s)."""
    home = tmp_path_factory.mktemp("home")
    patch = pytest.MonkeyPatch()
    # Without timing Inductor's matrix kernels against MKL's (max_autotune): a build of what users
    # get takes 75 s on 2 cores for these two steps, this one half that. What is tested (the same
    # text, batches, finding a built step again) does not depend on which kernels were chosen;
    # the benchmark (bench_llama_cpp.py) checks the text of the autotuned steps.
    patch.setattr(decode_compiled, "INDUCTOR_OPTIONS", {k: v for k, v in decode_compiled.INDUCTOR_OPTIONS.items()
                                                         if "autotune" not in k})
    decode_compiled._machine.cache_clear()
    tokenizer = tokenizer_class("characters").train(TINY_TEXT)
    torch.manual_seed(1)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                            position="rope", norm="rmsnorm", activation="swiglu", bias=False)).eval()
    folder = save_model_dir(tmp_path_factory.mktemp("models") / "modern", model, tokenizer, {})
    eager = {p: LanguageModel(model, tokenizer).generate(p, 40, temperature=0) for p in ("the cat", "a dog")}
    lm = LanguageModel(model, tokenizer)
    lm.engine.compile = True
    notes = []
    old = os.environ.get("REPYTILIAN_HOME")
    os.environ["REPYTILIAN_HOME"] = str(home)
    # The two builds are each mostly one core's work and Inductor builds one at a time in a process:
    # the batch step is built by a second process (from the saved folder: the same digest) meanwhile.
    options = json.dumps(decode_compiled.INDUCTOR_OPTIONS)
    other = subprocess.Popen([sys.executable, "-c", _BUILD_ROWS, str(folder), options], env=os.environ.copy(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        with notes_to(notes.append):
            lm.engine.prepare()  # the one-row step
        out, err = other.communicate(timeout=240)
        assert other.returncode == 0, err
        with notes_to(notes.append):
            lm.engine.prepare(rows=True)  # the batch step: built by the other process, loaded here
            compiled = {p: lm.generate(p, 40, temperature=0) for p in eager}
    finally:
        other.kill()
        os.environ.pop("REPYTILIAN_HOME") if old is None else os.environ.__setitem__("REPYTILIAN_HOME", old)
    yield {"home": home, "folder": folder, "model": model, "tokenizer": tokenizer, "eager": eager,
            "compiled": compiled, "notes": [n.text for n in notes] + out.splitlines(), "lm": lm}
    patch.undo()
    decode_compiled._machine.cache_clear()


@pytest.mark.slow
def test_the_compiled_step_gives_the_eager_greedy_text(built):
    """40 tokens in a context of 16: windows slide (a prefill, through the prompt step) between
    compiled steps, and the second prompt reuses the one build."""
    assert built["compiled"] == built["eager"]
    assert [n for n in built["notes"] if n.startswith("compiled the decoding step in")]
    assert sum("compiling the decoding step for this model" in n for n in built["notes"]) == 1
    assert sum("compiling the decoding step for batches" in n for n in built["notes"]) == 1
    assert sum("compiling the decoding step for prompts" in n for n in built["notes"]) == 1
    assert len(list((built["home"] / "decoding-steps").glob("*.so"))) == 3


@pytest.mark.slow
def test_requests_decoding_together_through_the_batch_step_get_their_eager_text(built):
    """Rows of different lengths, sampling settings and seeds; rows leave early (stop strings) and
    windows slide: each request gets the text it gets from eager decoding."""
    def requests(lm):
        prompts = ["the cat", "a dog ran", "t", "the mat. a"]
        return [Request(lm.encode_prompt(p), 30, SamplingOptions(temperature=t, seed=i), stop=("!",) if i == 2 else ())
                for i, (p, t) in enumerate(zip(prompts, [0, 0.8, 1.0, 0.5]))]

    def texts(lm):
        out = {}
        for index, event in lm.engine.run_many(requests(lm)):
            if isinstance(event, Token):
                out.setdefault(index, []).append(event.id)
        return out
    eager = LanguageModel(built["model"], built["tokenizer"])
    eager.engine.compile = False
    lm = built["lm"]
    from repytilian.decode_loop import TokenLoop

    calls = []
    decoder = lm.engine._decoders.take(None)
    library = decoder.compiled.rows
    lm.engine._decoders.give_back(decoder)
    run, loop_steps = library.run, TokenLoop.steps
    library.run = lambda inputs: calls.append(inputs[-2].numel()) or run(inputs)  # the positions: one a row
    TokenLoop.steps = lambda self, inputs, *a: calls.append(inputs[-1].numel()) or loop_steps(self, inputs, *a)
    try:
        assert texts(lm) == texts(eager)
    finally:
        library.run, TokenLoop.steps = run, loop_steps
    assert max(calls) == 4 and min(calls) >= 1  # the four rows together, then fewer as they end


@pytest.mark.slow
def test_the_built_steps_attend_over_the_longest_rows_span_only(built):
    """The attention reads each row's first max(lengths) + 1 positions, not the whole block: a step
    early in the window costs less (the text is the eager one: the tests above)."""
    lm = built["lm"]
    decoder = lm.engine._decoders.take(None)
    step = decoder.compiled
    lm.engine._decoders.give_back(decoder)
    model, seen = built["model"], []
    for library, lengths in ((step.one, [4]), (step.rows, [3, 6, 2])):
        run = library.run
        library.run = lambda inputs, run=run: seen.append(inputs[-1].numel()) or run(inputs)
        try:
            cache = model.new_cache(len(lengths))
            cache.lengths[:] = lengths
            step(torch.zeros(len(lengths), 1, dtype=torch.long), cache)
        finally:
            library.run = run
    assert seen == [5, 7] and model.config.block_size == 16


@pytest.mark.slow
def test_a_built_step_is_found_again_without_building(built, monkeypatch):
    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    monkeypatch.setattr(decode_compiled, "build", lambda *a, **k: pytest.fail("built again"))
    lm = LanguageModel(built["model"], built["tokenizer"])
    lm.engine.compile = True
    notes = []
    with notes_to(notes.append):
        assert lm.generate("a dog", 40, temperature=0) == built["eager"]["a dog"]
    assert notes == []
    assert lm.engine._decoders.take(None).compiled.one.run is not None  # it decoded through the built step


@pytest.mark.slow
def test_generate_with_compile_gives_the_text_it_gives_without(built, tmp_path, monkeypatch):
    args = ("generate.py", "-m", str(built["folder"]), "-c", "the cat", "-t", "30", "--seed", "3")
    plain = run_script(*args, cwd=tmp_path)  # a home with nothing built: eager
    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    compiled = run_script(*args, "--compile", cwd=tmp_path)
    assert plain.returncode == 0 and compiled.returncode == 0, compiled.stderr
    assert compiled.stdout == plain.stdout and compiled.stderr == plain.stderr  # found: nothing to say


@pytest.mark.slow
def test_generate_samples_with_compile_decode_through_the_batch_step(built, tmp_path, monkeypatch):
    args = ("generate.py", "-m", str(built["folder"]), "-c", "the cat", "-t", "30", "--seed", "3", "--num-samples", "3")
    plain = run_script(*args, cwd=tmp_path)
    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    monkeypatch.setattr(decode_compiled, "build", lambda *a, **k: pytest.fail("built again"))
    rows = []
    run = decode_compiled._Library.ready

    def ready(self, model, build_missing):
        if self.rows:
            rows.append(build_missing)
        return run(self, model, build_missing)
    monkeypatch.setattr(decode_compiled._Library, "ready", ready)
    compiled = run_script(*args, "--compile", cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    assert compiled.stdout == plain.stdout and compiled.stdout.count("---") == 2
    assert True in rows  # asked for, and found


@pytest.mark.slow
def test_by_default_a_step_built_before_is_used_and_none_is_built(built, monkeypatch):
    monkeypatch.setattr(decode_compiled, "build", lambda *a, **k: pytest.fail("built by default"))
    fresh = LanguageModel(built["model"], built["tokenizer"])  # this test's own home: nothing built
    assert fresh.generate("a dog", 40, temperature=0) == built["eager"]["a dog"]
    assert fresh.engine._decoders.take(None).compiled is None
    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    found = LanguageModel(built["model"], built["tokenizer"])
    assert found.generate("a dog", 40, temperature=0) == built["eager"]["a dog"]
    assert found.engine._decoders.take(None).compiled is not None
    found.engine.compile = False
    assert found.engine._decoders.take(None).compiled is None


@pytest.mark.slow
def test_a_float32_step_built_before_is_used_until_the_faster_format_is_built(built, monkeypatch):
    """Where this machine now builds its steps in bf16 (AMX, or a wide model), a step built in
    float32 before is still found by default; asking to compile builds the bf16 one, and a request
    for float32 itself gets the float32 step."""
    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))  # holds the fixture's float32 steps
    monkeypatch.setattr(decode_compiled, "step_dtype", lambda model: torch.bfloat16)
    model = built["model"]
    older = decode_compiled.compiled_step(model, None)
    assert older is not None and older.dtype == torch.float32 and older.one.path.exists()
    newer = decode_compiled.compiled_step(model, True)
    assert newer.dtype == torch.bfloat16 and not newer.one.path.exists() and newer.build_missing
    asked = decode_compiled.compiled_step(model, None, torch.float32)
    assert asked is not None and asked.dtype == torch.float32 and asked.one.path.exists()
    lm = LanguageModel(model, built["tokenizer"])
    assert lm.generate("a dog", 40, temperature=0) == built["eager"]["a dog"]
    assert lm.engine._decoders.take(None).compiled.dtype == torch.float32


@pytest.mark.machine  # AMX or not: CI runs it as on an AVX2-only CPU too
def test_a_built_step_holds_a_narrow_models_matrices_in_float32_as_eager_decoding_does(tmp_path, monkeypatch):
    """Below 256 wide eager decoding holds float32 matrices, and so does a built step, AMX or not:
    with AMX its steps were bf16 from 128 wide, and the shipped v2c's seeded text with --compile
    parted from its text without (5 of 6 seeds over 300 tokens). bf16 is there for the asking."""
    from repytilian.runtime.precision import fast_bf16

    def model(width: int) -> GPT:
        return GPT(ModelConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=width))

    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    native = fast_bf16(torch.device("cpu"))
    for width in (64, 128, 144, 254):
        assert decode_compiled.step_dtype(model(width)) == torch.float32 == choose_dtype(model(width), 1)
    assert decode_compiled.step_dtype(model(256)) == (torch.bfloat16 if native else torch.float32)
    asked = decode_compiled.compiled_step(model(128), True, torch.bfloat16)
    assert (asked.dtype == torch.bfloat16) if native else asked is None
    assert decode_compiled.compiled_step(model(128), True, torch.float16) is None  # none built in it: eager
    assert not list(tmp_path.rglob("*.so"))  # naming a step builds nothing


def test_the_digest_names_weights_config_and_machine(built):
    model = built["model"]
    twin = GPT(model.config).eval()
    twin.load_state_dict(model.state_dict())
    assert decode_compiled.step_digest(twin) == decode_compiled.step_digest(model)
    with torch.no_grad():
        twin.lm_head.weight[0, 0] += 1e-3  # trained on: another step
    assert decode_compiled.step_digest(twin) != decode_compiled.step_digest(model)


def test_the_cache_folder_keeps_the_newest_steps(tmp_path):
    for i in range(decode_compiled.KEEP + 3):
        path = tmp_path / f"{i}.so"
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 1000 + i, time.time() - 1000 + i))
    decode_compiled._keep_newest(tmp_path, decode_compiled.KEEP)
    assert sorted(int(p.stem) for p in tmp_path.glob("*.so")) == list(range(3, decode_compiled.KEEP + 3))


def test_the_cache_folder_keeps_each_kept_models_three_steps_together(tmp_path):
    """KEEP counts models, not files: a model's one-row, batch and prompt steps stay or go together
    (with KEEP files, building three models' steps threw out the first's one-row step)."""
    for i in range(decode_compiled.KEEP + 1):
        for suffix in ("", "-rows", "-prompt"):
            path = tmp_path / f"{i:040d}{suffix}.so"
            path.write_bytes(b"x")
            stamp = time.time() - 1000 + i + (0.5 if suffix == "-prompt" else 0)
            os.utime(path, (stamp, stamp))
    decode_compiled._keep_newest(tmp_path, decode_compiled.KEEP)
    kept = sorted(p.name for p in tmp_path.glob("*.so"))
    assert len(kept) == 3 * decode_compiled.KEEP and not any(name.startswith(f"{0:040d}") for name in kept)


def test_a_build_that_fails_leaves_nothing_in_the_cache(built, tmp_path, monkeypatch):
    def export_fails(*args, **kwargs):
        raise RuntimeError("unsupported operator")
    monkeypatch.setattr(decode_compiled.torch.export, "export", export_fails)
    step = decode_compiled.CompiledStep(built["model"], folder=tmp_path)
    notes = []
    with notes_to(notes.append):
        assert not step.prepare()
    assert notes[-1].text.startswith("note: the decoding step could not be compiled (RuntimeError: unsupported")
    assert sum("could not be compiled" in n.text for n in notes) == 1  # said once, not again for the prompt step
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_serve_with_compile_readies_the_step_as_it_loads_a_model(built, monkeypatch):
    from repytilian.serve.registry import Registry

    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    monkeypatch.setattr(decode_compiled, "build", lambda *a, **k: pytest.fail("built again"))
    registry = Registry(single=built["folder"], compile=True)
    lm = registry.load(registry.scan()[0])
    assert lm.engine.compile is True
    ready = lm.engine._decoders.take(None)  # the decoder made while loading, kept for the first request
    assert ready.compiled.one.run is not None and ready.compiled.rows.run is not None


@pytest.mark.slow
def test_a_built_step_others_could_have_written_is_not_loaded(built, tmp_path):
    """It is native code: in a folder anyone may write to, it could be anyone's."""
    import shutil

    folder = tmp_path / "decoding-steps"
    shutil.copytree(built["home"] / "decoding-steps", folder)
    folder.chmod(0o777)
    step = decode_compiled.CompiledStep(built["model"], build_missing=False, folder=folder)
    notes = []
    with notes_to(notes.append):
        assert not step.prepare()
    assert "not this user's alone" in notes[0].text and "could not be loaded" in notes[0].text
    folder.chmod(0o755)
    again = decode_compiled.CompiledStep(built["model"], build_missing=False, folder=folder)
    assert again.prepare() and again.one.run is not None


@pytest.mark.slow
def test_a_prompt_goes_in_through_the_prompt_step_or_else_a_short_one_through_the_steps(built, monkeypatch):
    """A prompt's tokens go in at once, a row at a time, through the prompt step where it is
    built (the same logits and cache as eagerly); without it, a short prompt goes in a position at
    a time through the built steps and a long one eagerly."""
    from repytilian.decode import Decoder

    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    model = built["model"]
    prompt = torch.tensor([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1], [2, 2, 2, 2, 2]])
    eager = Decoder(model, 4)
    expected = [eager.forward(prompt[:, :-1], 1), eager.forward(prompt[:, -1:], 1)]
    step = decode_compiled.compiled_step(model, None)
    decoder = Decoder(model, 4, compiled=step)
    eager_pass = decoder.model
    decoder.model = lambda *a, **k: pytest.fail("an eager pass")
    prompt_run, shapes = step.prompt.run, []
    assert prompt_run is not None  # built with the batch step (the fixture), found by any decoder
    step.prompt.run = lambda inputs: shapes.append(tuple(inputs[-3].shape)) or prompt_run(inputs)
    got = [decoder.forward(prompt[:, :-1], 1), decoder.forward(prompt[:, -1:], 1)]  # rows 1-3, a batch step
    assert shapes == [(1, 4)] * 3 and decoder.cache.lengths == [0, 5, 5, 5]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for layer in range(model.config.n_layer):
        torch.testing.assert_close(decoder.cache.keys[layer][1:4, :5], eager.cache.keys[layer][1:4, :5])
        torch.testing.assert_close(decoder.cache.values[layer][1:4, :5], eager.cache.values[layer][1:4, :5])

    step.prompt.run = None  # not built: a position at a time through the steps
    decoder.reset()
    got = [decoder.forward(prompt[:, :-1], 1), decoder.forward(prompt[:, -1:], 1)]
    assert decoder.cache.lengths == [0, 5, 5, 5]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    long = torch.arange(decode_compiled.PREFILL_TOKENS + 1)[None] % 10
    decoder.model, calls = (lambda *a, **k: calls.append(1) or eager_pass(*a, **k)), []
    decoder.forward(long, 0)
    assert calls == [1] and decoder.cache.lengths[0] == len(long[0])


@pytest.mark.slow
def test_the_built_batch_step_lets_other_threads_run_while_it_works(built, monkeypatch):
    """A server's event loop runs beside its batch: while a batch step runs, other threads get the
    interpreter. Python never takes the lock from a thread here (the switch interval is made
    longer than the test), so the main thread runs while the step does only where the step lets go
    of it: in every step, or (torch's own runner, which holds it) never."""
    import sys
    import threading

    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    step = decode_compiled.compiled_step(built["model"], None)
    assert step.prepare(rows=True)
    run, inside, seen = step.rows.run, [False], [0]

    def watched(inputs):
        inside[0] = True
        out = run(inputs)
        inside[0] = False
        return out

    step.rows.run = watched
    cache = built["model"].new_cache(4)
    idx = torch.zeros(4, 1, dtype=torch.long)
    steps = 200
    worker = threading.Thread(target=lambda: [step(idx, cache) for _ in range(steps)])
    interval = sys.getswitchinterval()
    sys.setswitchinterval(600)
    try:
        worker.start()
        while worker.is_alive():
            seen[0] += inside[0]
            time.sleep(0)  # lets go of the lock: the worker goes on at once where it waits for it
    finally:
        sys.setswitchinterval(interval)
        worker.join()
    assert seen[0] >= steps // 4


@pytest.mark.slow
@pytest.mark.machine  # bf16 matrices where this CPU computes bf16 natively: CI runs it as on AVX2 too
def test_a_wide_models_step_holds_its_matrices_as_the_eager_decoder_does(tmp_path, monkeypatch):
    """From 256 wide, the blocks' matrices of a built step are bf16 where bf16 is native (half the
    bytes a step reads), float32 elsewhere; its greedy text is that of eager decoding in that format."""
    from repytilian.runtime.precision import cpu_bf16

    monkeypatch.setattr(decode_compiled, "INDUCTOR_OPTIONS", {k: v for k, v in decode_compiled.INDUCTOR_OPTIONS.items()
                                                               if "autotune" not in k})  # as the fixture: half the build
    decode_compiled._machine.cache_clear()
    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    tokenizer = tokenizer_class("characters").train(TINY_TEXT)
    torch.manual_seed(2)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=4, n_embd=256)).eval()
    assert decode_compiled.step_dtype(model) == (torch.bfloat16 if cpu_bf16().native else torch.float32)
    narrow = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    assert decode_compiled.step_dtype(narrow) == torch.float32
    lm = LanguageModel(model, tokenizer)

    def greedy(compile: bool, dtype: torch.dtype | None) -> list[int]:
        lm.engine.compile = compile
        request = Request(tokenizer.encode("the cat"), 30, SamplingOptions(temperature=0), dtype=dtype)
        return [e.id for e in lm.engine.run(request) if isinstance(e, Token)]

    step = decode_compiled.CompiledStep(model)
    with notes_to(lambda n: None):
        compiled = greedy(True, None)
    assert (tmp_path / "decoding-steps" / f"{decode_compiled.step_digest(model, step.dtype)}.so").exists()
    assert compiled == greedy(False, step.dtype)
    decode_compiled._machine.cache_clear()


@pytest.mark.slow
def test_a_request_in_the_default_format_never_gets_a_decoder_made_for_another(built, monkeypatch):
    """A decoder given back after a request for float16 (eager: no step is built in it) was given
    to the next request in the default format, which then decoded in 16 bits: other text."""
    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    lm = LanguageModel(built["model"], built["tokenizer"])
    lm.generate("a dog", 5, temperature=0, dtype=torch.float16)
    decoder = lm.engine._decoders.take(None)
    assert decoder.dtype == torch.float32 and decoder.compiled is not None
    lm.engine._decoders.give_back(decoder)
    assert lm.generate("a dog", 40, temperature=0) == built["eager"]["a dog"]


AMX_STEP_SCRIPT = """
import sys, torch
from pathlib import Path
from repytilian import decode_compiled
from repytilian.model import GPT, ModelConfig
torch.manual_seed(0)
model = GPT(ModelConfig(vocab_size=32, block_size=16, n_layer=1, n_head=4, n_embd=128)).eval()
step = decode_compiled.CompiledStep(model, build_missing=False, dtype=torch.bfloat16)
step.one = decode_compiled._Library(Path(sys.argv[1]), None, torch.bfloat16)
assert step.prepare(), "not loaded"
print(tuple(step(torch.zeros(1, 1, dtype=torch.long), GPT.new_cache(model, 1)).shape))
"""


@pytest.mark.slow
@pytest.mark.skipif(not {"amx_bf16", "amx_tile"} <= (cpu_flags() or set()), reason="a CPU without AMX")
def test_a_bf16_step_found_built_runs_in_a_process_that_has_not_used_amx_yet(tmp_path, monkeypatch):
    """Linux lets a process use AMX's tiles only once it has asked; building a step asks (the
    compiler), and so does any bf16 matrix product of oneDNN's, but a process that only loaded a
    built bf16 step and called it died of an illegal instruction."""
    # Inductor's own matrix kernels, which use the tiles (this module's fixture leaves autotuning out)
    options = {**decode_compiled.INDUCTOR_OPTIONS, "max_autotune": True, "max_autotune_gemm_backends": "CPP"}
    monkeypatch.setattr(decode_compiled, "INDUCTOR_OPTIONS", options)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=32, block_size=16, n_layer=1, n_head=4, n_embd=128)).eval()
    path = tmp_path / "step.so"
    decode_compiled.build(model, None, path, torch.bfloat16)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", AMX_STEP_SCRIPT, str(path)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "(1, 32)", (r.returncode, r.stderr[-500:])


def _events(lm, request):
    tokens, ended = [], None
    for event in lm.engine.run(request):
        if isinstance(event, Token):
            tokens.append((event.id, event.text, event.logprob))
        elif type(event).__name__ == "Ended":
            ended = (event.reason, event.tokens, event.text)
    return tokens, ended


@pytest.mark.slow
def test_a_lone_request_takes_several_tokens_a_call_through_the_decoding_loop(built, monkeypatch):
    """Greedy, with log-probabilities, a stop string, a window that slides (context 16) and a
    token budget that ends mid-call: the same events as a token at a time, in fewer calls."""
    from repytilian.decode_loop import TokenLoop

    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    lm = LanguageModel(built["model"], built["tokenizer"])
    calls = []
    loop_steps = TokenLoop.steps
    monkeypatch.setattr(TokenLoop, "steps", lambda self, *a, **k: calls.append(a[2]) or loop_steps(self, *a, **k))
    requests = [lambda: Request(lm.encode_prompt("the cat"), 45, SamplingOptions(temperature=0), logprobs=True),
                lambda: Request(lm.encode_prompt("a dog"), 40, SamplingOptions(temperature=0), stop=("g" * 20,))]
    looped = [_events(lm, request()) for request in requests]
    assert calls and len(calls) < 45 // 4  # up to 16 tokens a call; windows of 16 cut some short
    assert looped[0][1] == ("length", 45, "") and looped[1][1][0] == "stop"
    monkeypatch.setattr(decode_compiled.CompiledStep, "steps", lambda *a, **k: None)  # a token at a time
    one_at_a_time = [_events(lm, request()) for request in requests]
    for (got, got_end), (want, want_end) in zip(looped, one_at_a_time):
        assert [t[:2] for t in got] == [t[:2] for t in want] and got_end == want_end
    assert all(abs(a[2] - b[2]) < 1e-4 for a, b in zip(looped[0][0], one_at_a_time[0][0]))
    assert {t[2] for t in looped[1][0]} == {t[2] for t in one_at_a_time[1][0]} == {None}  # not asked for


@pytest.mark.slow
def test_a_seeded_request_alone_through_the_loop_gets_the_text_it_gets_in_a_batch(built, monkeypatch):
    """Sampled with a seed, alone (several tokens a call, its windows sliding) and among other
    requests of other settings (a token at a time, through the batch step): the same tokens, and
    the same eagerly; without a seed, alone, through the loop too."""
    from repytilian.decode_loop import TokenLoop

    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    lm = LanguageModel(built["model"], built["tokenizer"])
    calls = []
    loop_steps = TokenLoop.steps
    monkeypatch.setattr(TokenLoop, "steps", lambda self, *a, **k: calls.append(1) or loop_steps(self, *a, **k))

    def seeded():
        return Request(lm.encode_prompt("the"), 40, SamplingOptions(temperature=1.0, top_k=5, top_p=0.9, seed=5))

    alone = [t[0] for t in _events(lm, seeded())[0]]
    assert calls and len(alone) == 40
    calls.clear()
    others = [Request(lm.encode_prompt("a dog"), 25, SamplingOptions(temperature=0.7, seed=9)),
              Request(lm.encode_prompt("the mat"), 30, SamplingOptions(temperature=0))]
    together = [event.id for index, event in lm.engine.run_many([others[0], seeded(), others[1]])
                if index == 1 and isinstance(event, Token)]
    assert together == alone
    eager = LanguageModel(built["model"], built["tokenizer"])
    eager.engine.compile = False
    assert [t[0] for t in _events(eager, seeded())[0]] == alone
    unseeded, _ = _events(lm, Request(lm.encode_prompt("the"), 30, SamplingOptions(temperature=1.0)))
    assert calls and len(unseeded) == 30


@pytest.mark.slow
def test_a_seeded_requests_samples_take_the_loop_and_keep_their_text_whichever_ends_first(built, monkeypatch):
    """Three samples of one seeded request, one stop string: the samples end at different steps,
    some within a call of several; each sample draws from a generator of its own, so the tokens are
    those of a step at a time (eagerly, nothing built)."""
    from repytilian.decode_loop import TokenLoop

    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    lm = LanguageModel(built["model"], built["tokenizer"])
    rows = []
    loop_steps = TokenLoop.steps
    monkeypatch.setattr(TokenLoop, "steps", lambda self, inputs, *a: rows.append(inputs[-1].numel())
                        or loop_steps(self, inputs, *a))

    def samples(model):
        request = Request(model.encode_prompt("the"), 40, SamplingOptions(temperature=1.2, seed=11), num_samples=3,
                          stop=("a",))
        out, ends = {}, {}
        for event in model.engine.run(request):
            if isinstance(event, Token):
                out.setdefault(event.sample, []).append(event.id)
            elif type(event).__name__ == "Ended":
                ends[event.sample] = event.tokens
        return out, ends

    looped, ends = samples(lm)
    eager = LanguageModel(built["model"], built["tokenizer"])
    eager.engine.compile = False
    assert looped == samples(eager)[0]
    assert 3 in rows and len(set(ends.values())) > 1  # together through the loop; not all ended at once


@pytest.mark.slow
def test_greedy_and_seeded_decoding_leave_torchs_generator_alone(built, monkeypatch):
    """Only an unseeded request draws from torch's generator (its waiting times follow
    torch.manual_seed); greedy and seeded ones, through the loop or a step at a time, leave it as
    it was (a user's own random numbers after generating stay what they were)."""
    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    lm = LanguageModel(built["model"], built["tokenizer"])
    eager = LanguageModel(built["model"], built["tokenizer"])
    eager.engine.compile = False
    torch.manual_seed(0)
    before = torch.get_rng_state()
    for model in (lm, eager):
        requests = [Request(model.encode_prompt("the"), 20, SamplingOptions(temperature=0)),
                    Request(model.encode_prompt("a"), 20, SamplingOptions(temperature=1.0, seed=3), num_samples=2)]
        for request in requests:
            list(model.engine.run(request))
        list(model.engine.run_many(requests))
    assert torch.equal(torch.get_rng_state(), before)
    list(lm.engine.run(Request(lm.encode_prompt("the"), 5, SamplingOptions(temperature=1.0))))
    assert not torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_a_server_runs_lanes_where_batches_decode_through_the_built_steps_loop_only(built, monkeypatch):
    """Two lanes on two cores pay where a batch's steps run in C without the interpreter's lock;
    eager batches hold it, and two lanes of them gave 2.5x fewer tokens/s than one."""
    from repytilian.batch_loop import steps_in_c
    from repytilian.runtime.cpu import batch_lanes
    from repytilian.serve.admission import Server
    from repytilian.serve.registry import Registry

    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    monkeypatch.setattr(decode_compiled, "build", lambda *a, **k: pytest.fail("built again"))
    registry = Registry(single=built["folder"])  # no --compile: the steps built before are found
    lm = registry.load(registry.scan()[0])
    eager = LanguageModel(built["model"], built["tokenizer"])
    eager.engine.compile = False
    assert steps_in_c(lm.engine) and not steps_in_c(eager.engine)
    server = Server(registry)
    # a request alone decodes on every thread, but a small model's built steps on a busy lane's
    # (a second thread only waited: v2c's lone requests took 20.7-22.8 ms of CPU against 14.5)
    for model, lanes, alone in ((lm, batch_lanes(), server.busy_threads), (eager, 1, server.threads)):
        loop = server.loop(model)
        assert len(loop.loops) == lanes and loop.threads == alone
        loop.close()
    monkeypatch.setattr(decode_compiled, "SMALL_MODEL_BYTES", 0)  # a model as wide as `hyper`: every thread
    wide = Registry(single=built["folder"])
    loop = server.loop(wide.load(wide.scan()[0]))
    assert loop.threads == server.threads
    loop.close()


@pytest.mark.slow
def test_a_servers_batches_take_a_request_alone_through_the_batch_step(built, monkeypatch):
    """In 16 bits the one-row step's numbers part from the batch step's (their kernels differ),
    and a seeded request's text alone from its text among others (v2c with AMX: one of 8 requests,
    from its 33rd token). The batch step gives a row the same numbers whatever else is in the
    batch, so a server's batch loop takes a request alone through it too; elsewhere a request
    alone keeps the faster one-row step."""
    from repytilian.batch_loop import BatchLoop

    monkeypatch.setenv("REPYTILIAN_HOME", str(built["home"]))
    lm = LanguageModel(built["model"], built["tokenizer"])
    lm.engine.compile = None
    lm.engine.prepare(rows=True)
    used = []
    choose = decode_compiled.CompiledStep._library
    monkeypatch.setattr(decode_compiled.CompiledStep, "_library",
                        lambda self, count: used.append((count, (lib := choose(self, count)).rows)) or lib)
    request = lambda seed: Request(lm.encode_prompt("the cat"), 12, SamplingOptions(seed=seed, temperature=1.0))  # noqa: E731
    lm.generate("the cat", 12, seed=1)
    assert {rows for count, rows in used} == {None}  # alone in Python: the one-row step
    used.clear()
    loop = BatchLoop(lm.engine)
    texts = {}

    def ask(key, req):
        done, parts = threading.Event(), []
        loop.submit(req, lambda item: done.set() if item is None else parts.append(getattr(item, "text", "")))
        return done, parts
    for key, reqs in (("alone", [request(1)]), ("together", [request(1), request(2), request(3)])):
        asked = [ask(key, r) for r in reqs]
        assert all(done.wait(60) for done, _ in asked)
        texts[key] = "".join(asked[0][1])
    loop.close()
    assert used and all(rows == decode_compiled.ROWS_EXAMPLE for count, rows in used)  # the batch step only
    assert texts["alone"] == texts["together"]
