"""Every kind of CPU: bf16 known up front, every probe bounded, Muon without bf16, honest progress.

Marked `machine`: CI runs these once more under the simulation of an AVX2-only CPU
(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2), so they must hold on both kinds.
"""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, TINY, TINY_OVERRIDES, run_script

import repytilian.runtime.precision as precision
from repytilian.api import TrainOptions, train
from repytilian.cli.progress import LineProgress
from repytilian.config import TrainConfig
from repytilian.data import DataSource, TokenData
from repytilian.model import GPT, ModelConfig
from repytilian.optim import Muon, orthogonalise
from repytilian.runtime.cpu import cpu_flags
from repytilian.trainer import Trainer, TrainState, expectation

pytestmark = pytest.mark.machine

SIMULATED_AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


@pytest.mark.parametrize("machine, capability, isa, flags, says_no", [
    ("x86_64", "AVX2", "", {"avx2", "fma"}, "CPU capability is AVX2"),  # most laptops
    ("x86_64", "AVX512", "", {"avx512f", "avx512bw"}, "neither avx512_bf16 nor amx_bf16"),  # Skylake-X
    ("x86_64", "AVX512", "", {"avx512f", "avx512_bf16"}, None),  # Cooper Lake, Zen 4
    ("x86_64", "AVX512", "", {"avx512f", "amx_bf16", "amx_tile"}, None),  # Sapphire Rapids
    ("x86_64", "AVX512", "AVX2", {"avx512f", "amx_bf16"}, "ONEDNN_MAX_CPU_ISA=AVX2"),  # told to act as AVX2
    ("x86_64", "AVX512", "", None, None),  # no /proc/cpuinfo: the probe decides
    ("aarch64", "DEFAULT", "", {"asimd", "sve"}, "features have no bf16"),  # Graviton 2
    ("aarch64", "SVE256", "", {"asimd", "bf16", "sve"}, None),  # Graviton 3
    ("arm64", "DEFAULT", "", None, None),  # macOS: the probe decides
])
def test_what_the_cpu_says_of_itself_comes_first(machine, capability, isa, flags, says_no):
    why = precision._up_front_no(machine, capability, isa, flags)
    assert (why is None) == (says_no is None) and (says_no is None or says_no in why)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}  # the first CPU's
    info.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(info) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") is None


PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
import repytilian.runtime.precision as precision
from repytilian.runtime.cpu import cpu_flags
from repytilian.decode import choose_dtype
from repytilian.model import GPT, ModelConfig
timed = []
real = precision._one_step
precision._one_step = lambda *a: timed.append(a[2]) or real(*a)
wide = GPT(ModelConfig(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=256))
warnings = []
asked = precision.resolve_dtype("bfloat16", torch.device("cpu"), wide, 16, warn=warnings.append)
print(json.dumps({"native": precision.cpu_bf16().native, "why": precision.cpu_bf16().why,
                  "auto": precision.resolve_dtype("auto", torch.device("cpu"), wide, 16), "timed": timed,
                  "asked": asked, "warnings": warnings, "decode": str(choose_dtype(wide))}))
"""


def test_an_avx2_only_cpu_is_known_without_timing_bf16(tmp_path):
    env = {**__import__("os").environ, **SIMULATED_AVX2, "REPYTILIAN_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert not seen["native"] and "AVX2" in seen["why"]
    assert seen["auto"] == "float32" and seen["timed"] == []  # nothing timed: the answer was known
    assert seen["decode"] in ("torch.float32", "torch.float16")  # never emulated bf16: float16 where measured faster
    # asked for all the same: it trains in bf16, after one line that says what it costs
    (warning,) = seen["warnings"]
    assert seen["asked"] == "bfloat16" and "no native bf16" in warning and "x slower than float32" in warning


def test_a_probe_gives_up_after_its_time_and_counts_as_slower(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: precision.Bf16Support(True, "said so by the test"))
    monkeypatch.setattr(precision, "PROBE_SECONDS", 0.0)  # every step is over the budget
    model = GPT(ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=4, n_embd=256))
    steps = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: steps.append(1) or forward(*a, **k))
    f = precision.measure_formats(model, torch.device("cpu"), 4)
    assert f["float32"] == f["bfloat16"] == math.inf
    assert len(steps) == 2  # one warm-up step of each format, then they gave up
    assert precision.resolve_dtype("auto", torch.device("cpu"), model, 4) == "float32"
    assert len(steps) == 4


def test_bfloat16_on_a_cpu_without_it_warns_once_and_trains(corpus_file, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16", lambda: precision.Bf16Support(False, "told so by the test"))
    monkeypatch.setattr(precision, "bf16_slowdown", lambda: 97.0)
    lines = []
    result = train(TrainOptions(data=DataSource("file", str(corpus_file)), iterations="quick", progress=False,
                                overrides={**TINY_OVERRIDES, "dtype": "bfloat16"}, out=None), log=lines.append)
    assert result.state.step == 50 and result.language_model.meta["train"]["dtype"] == "bfloat16"
    warned = [line for line in lines if "no native bf16" in line]
    assert len(warned) == 1 and "told so by the test" in warned[0] and "97x slower" in warned[0]


def test_the_choice_is_remembered_apart_for_the_simulated_cpu(monkeypatch):
    model = GPT(ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=32))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native_key = precision.choice_key(model, 4)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert precision.choice_key(model, 4) != native_key
    assert torch.backends.cpu.get_cpu_capability() in native_key


# --- Muon without bf16 -----------------------------------------------------------------------


def _muon_run(cls, steps=3, shapes=((96, 32), (32, 32), (32, 128)), **kw):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = cls(params, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", **kw)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return params, opt


def test_our_muon_in_bf16_is_torchs_muon_exactly():
    theirs, _ = _muon_run(torch.optim.Muon)
    ours, _ = _muon_run(Muon)
    assert all(torch.equal(a, b) for a, b in zip(theirs, ours))


def test_matrices_of_one_shape_orthogonalised_as_a_stack_take_torchs_steps():
    """Our Muon orthogonalises each layer's matrices of one shape together, as one batch of products:
    each matrix still gets its own update (equal here; a batched product may round otherwise on
    another CPU, far below what one matrix's update in another's place would change)."""
    shapes = ((96, 32), (32, 32), (96, 32), (32, 128), (32, 32), (96, 32))
    for ns_dtype in (torch.bfloat16, torch.float32):
        theirs, _ = _muon_run(torch.optim.Muon, shapes=shapes)
        ours, _ = _muon_run(Muon, shapes=shapes, ns_dtype=ns_dtype)
        for a, b in zip(theirs, ours):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-3 if ns_dtype == torch.bfloat16 else 5e-3)


def test_muon_in_float32_never_touches_bf16_and_orthogonalises(monkeypatch):
    def no_bf16(self, *a, **k):
        raise AssertionError("bf16 used")
    monkeypatch.setattr(torch.Tensor, "bfloat16", no_bf16)
    ours, opt = _muon_run(Muon, ns_dtype=torch.float32)
    assert all(s["momentum_buffer"].dtype == torch.float32 for s in opt.state.values())
    # against an independent reference: the singular values of the result are pushed near 1
    g = torch.randn(64, 200)
    o = orthogonalise(g, (3.4445, -4.7750, 2.0315), 5, 1e-7, torch.float32)
    assert o.dtype == torch.float32 and o.shape == g.shape
    s = torch.linalg.svdvals(o)
    assert s.min() > 0.5 and s.max() < 1.3
    u, _, vh = torch.linalg.svd(g, full_matrices=False)  # the direction is U V^T's
    assert torch.nn.functional.cosine_similarity(o.flatten(), (u @ vh).flatten(), dim=0) > 0.95


def test_training_picks_the_orthogonalisation_format_with_the_training_one(corpus_file):
    for dtype in ("float32", "bfloat16"):
        result = train(TrainOptions(data=DataSource("file", str(corpus_file)), iterations="quick", progress=False,
                                    overrides={**TINY_OVERRIDES, "max_iters": 3, "dtype": dtype, "optimizer": "muon"},
                                    out=None), log=lambda m: None)
        assert result.state.step == 3
    ids = np.random.default_rng(0).integers(0, 20, 5000).astype(np.uint16)
    model = GPT(ModelConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32))
    for dtype, expected in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        trainer = Trainer(model, TokenData.split(ids, 0.1), TrainConfig(dtype=dtype, optimizer="muon"),
                          torch.device("cpu"), report=lambda e: None)
        assert trainer.optimizer.muon.ns_dtype == expected


# --- no silent minutes ----------------------------------------------------------------------------


def _trainer(n_ids=1_000_000, **cfg):
    ids = np.random.default_rng(0).integers(0, 20, n_ids).astype(np.uint16)
    model = GPT(ModelConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=16))
    return Trainer(model, TokenData.split(ids, 0.1), TrainConfig(batch_size=64, dtype="float32", **cfg),
                   torch.device("cpu"), report=lambda e: None)


def test_the_final_evaluation_is_proportional_to_the_run(monkeypatch):
    import repytilian.evaluate as train_module  # where the policy of the evaluation after training lives

    trainer = _trainer()
    whole = len(trainer.data.val) - 1
    trainer.state.tokens_seen = 1_000  # a quick run: the smallest evaluation
    trainer.full_val_loss()
    assert trainer.final_val_scored == train_module.FINAL_VAL_MIN_TOKENS
    # counted as the run's first line counts the split (its tokens), not its predictions (one fewer)
    assert trainer.final_val_scope() == f"the first 65,537 of the validation split's {whole + 1:,} tokens"
    trainer.state.tokens_seen = 10**7  # a long run: the whole split
    trainer.full_val_loss()
    assert trainer.final_val_scored == whole and trainer.final_val_scope() == "the whole validation split"
    # and it never takes more than its share of the training time: here none, so one batch
    monkeypatch.setattr(train_module, "FINAL_VAL_MIN_SECONDS", 0.0)
    trainer.full_val_loss()
    assert trainer.final_val_scored == 64 * 16 and "the first 1,025 of" in trainer.final_val_scope()


def test_a_long_run_says_what_to_expect():
    state, cfg = TrainState(step=3, max_iters=10_000), TrainConfig()
    note = expectation(2, 36.0, 64 * 256, state, cfg)  # hyper's first steps on an AVX2 laptop
    assert "910 tokens/s" in note and "18.00 s a step" in note and "9,997 steps" in note and "49 h 59 min" in note
    assert expectation(2, 0.05, 1024, TrainState(step=3, max_iters=2000), cfg) is None  # a minute: the bar says
    assert expectation(2, 36.0, 1024, TrainState(step=3, max_iters=None), cfg) is None  # until stopped
    budget = expectation(2, 36.0, 1024, TrainState(step=3, max_iters=None, train_seconds=60),
                         TrainConfig(max_seconds=600))
    assert "the time budget will take about 9 min" in budget


def test_what_to_expect_is_timed_on_the_steps_not_on_what_compile_auto_adds_to_the_budget(monkeypatch):
    # Was: "637 tokens/s (6.43 s a step)" for -s quarter's 0.5 s steps: the budget's clock, which
    # also counts compile auto's measuring and compiling (added between two steps), was divided by steps.
    import repytilian.trainer as train_module
    from repytilian.events import Note
    from repytilian.runtime.signals import StopRequest

    monkeypatch.setattr(train_module, "EXPECT_AFTER_SECONDS", 0.0)
    notes = []
    trainer = _trainer(n_ids=20_000, max_seconds=3600.0, max_iters=None, eval_interval=1000)
    trainer.report = lambda e: notes.append(e.text) if isinstance(e, Note) else None

    def measured_and_compiled() -> None:  # what _check_compile does to the clock
        if trainer.state.step == 2:
            trainer.state.train_seconds += 100.0

    trainer.run(StopRequest(at_step=4), progress=False, after_step=measured_and_compiled)
    (said,) = [n for n in notes if n.startswith("measured")]
    per_step = float(said.split(" s a step")[0].split("(")[-1])
    assert per_step < 5.0, said
    assert "about 58 min of training" in said  # the budget left does count what compiling took


def test_what_to_expect_is_not_timed_on_the_step_that_builds_the_compiled_model(monkeypatch):
    # Was: "792 tokens/s (5.17 s a step)" for -s quarter's 0.16 s steps on a Xeon: the first step
    # through the model compiled mid-run traces and builds it, and was counted as a training step.
    import time

    import repytilian.trainer as train_module
    from repytilian.events import Note
    from repytilian.runtime.signals import StopRequest

    monkeypatch.setattr(train_module, "EXPECT_AFTER_SECONDS", 0.0)
    notes = []
    trainer = _trainer(n_ids=20_000, max_seconds=3600.0, max_iters=None, eval_interval=1000)
    trainer.report = lambda e: notes.append(e.text) if isinstance(e, Note) else None
    eager = trainer.forward

    def built_on_first_call(*args, **kwargs):
        if not built_on_first_call.built:
            built_on_first_call.built = True
            time.sleep(2.0)
        return eager(*args, **kwargs)
    built_on_first_call.built = False

    def compile_after_step_one() -> None:  # what _check_compile does to the model
        if trainer.state.step == 1:
            trainer.forward = built_on_first_call

    trainer.run(StopRequest(at_step=6), progress=False, after_step=compile_after_step_one)
    (said,) = [n for n in notes if n.startswith("measured")]
    assert float(said.split(" s a step")[0].split("(")[-1]) < 0.5, said


def test_progress_off_a_terminal_is_plain_lines(corpus_file, tmp_path, monkeypatch):
    monkeypatch.delenv("REPYTILIAN_NO_PROGRESS")
    r = run_script("training.py", "-d", str(corpus_file), "-m", "m", "-i", "quick", "-t", "0", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "training: 50/50 steps (100%), loss " in r.stderr
    r = run_script("eval", "-m", "m", cwd=tmp_path)
    assert r.returncode == 0 and "\r" not in r.stderr


def test_line_progress_writes_every_so_often_and_at_the_end(capsys):
    bar = LineProgress(200, "step", "training", every=0.0)  # a line at every update
    bar.set_postfix_str("loss 2.5000, 900 tok/s")
    bar.update(50)
    bar.update(50)
    bar.close()  # the last update's line already said 100/200: nothing more
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("training: 50/200 steps (25%), loss 2.5000, 900 tok/s, 00:00 elapsed, ETA 00:00")
    assert len(lines) == 2 and lines[1].startswith("training: 100/200 steps (50%)")
    bar = LineProgress(200, "step", "training", every=3600.0)  # no line due before the end
    bar.update(200)
    bar.close()
    bar.close()  # closing twice writes once
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("training: 200/200 steps (100%), 00:00 elapsed") and "ETA" not in line
    quiet = LineProgress(None, "window", "evaluating", every=0.0, delay=60.0)
    quiet.update(5)
    quiet.close()
    assert capsys.readouterr().err == ""  # work that ends before `delay` says nothing
