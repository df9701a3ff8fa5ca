"""Training precision (measured, stored, resumable), torch.compile's fallback, and time budgets."""
import json
import re
import shutil

import pytest
import torch
from conftest import TINY, TINY_OVERRIDES, run_script

from repytilian.api import TrainOptions, train
from repytilian.config import TrainConfig
from repytilian.data import DataSource
from repytilian.errors import RepytilianError
from repytilian.model import GPT, ModelConfig
from repytilian.runtime.precision import cpu_bf16, resolve_dtype
from repytilian.trainer import TrainState, learning_rate

pytestmark = pytest.mark.machine  # the dtype and timings depend on the CPU: CI runs these as on AVX2 too


def options(corpus_file, tmp_path, **over):
    return TrainOptions(data=DataSource("file", str(corpus_file)), iterations="quick", progress=False,
                        overrides={**TINY_OVERRIDES, **over}, out=str(tmp_path / "m"),
                        interrupt_root=str(tmp_path / "models"), seed=3)


def test_auto_keeps_float32_where_bf16_only_adds_conversions():
    # a model this small is all per-operation overhead: bf16 cannot be 1.15x faster
    model = GPT(ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=16))
    assert resolve_dtype("auto", torch.device("cpu"), model, 4) == "float32"


def test_auto_measures_wide_models_without_touching_the_random_stream():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=4, n_embd=256))
    before = torch.get_rng_state()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert resolve_dtype("auto", torch.device("cpu"), model, 4) in ("float32", "bfloat16")
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_the_measured_choice_is_remembered_per_machine_and_shape(monkeypatch, tmp_path):
    import repytilian.runtime.precision as precision

    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    # the mechanism, on any CPU: where bf16 is emulated nothing is measured, so nothing is remembered
    monkeypatch.setattr(precision, "cpu_bf16", lambda: precision.Bf16Support(True, "said so by the test"))
    real_step = precision._one_step  # the mechanism: steady timings, as a quiet machine gives
    monkeypatch.setattr(precision, "_one_step", lambda m, d, name, x: real_step(m, d, name, x) * 0 + 0.010)
    model = GPT(ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=32))
    first = resolve_dtype("auto", torch.device("cpu"), model, 4)
    kept = list(json.loads((tmp_path / precision.CHOICES_FILE).read_text()).values())
    assert [k["dtype"] for k in kept] == [first] and kept[0]["float32"] > 0 and kept[0]["tokens"] == 32

    def no_more_timing(*a, **kw):
        raise AssertionError("timed again")
    monkeypatch.setattr(precision, "measure_formats", no_more_timing)
    assert resolve_dtype("auto", torch.device("cpu"), model, 4) == first  # the same model, not re-timed
    wider = GPT(ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=64))
    with pytest.raises(AssertionError, match="timed again"):  # another shape is measured anew
        resolve_dtype("auto", torch.device("cpu"), wider, 4)
    (tmp_path / precision.CHOICES_FILE).write_text("{not json")  # a damaged file is measured over
    monkeypatch.undo()
    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: precision.Bf16Support(True, "said so by the test"))
    assert resolve_dtype("auto", torch.device("cpu"), model, 4) in ("float32", "bfloat16")


def test_a_machine_too_busy_to_time_either_format_is_not_remembered(monkeypatch, tmp_path):
    # Found on a Xeon with AMX while a C++ build took both cores: each format's first step took over
    # PROBE_SECONDS, both counted infinite, and float32 was remembered for that machine and shape.
    import repytilian.runtime.precision as precision

    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: precision.Bf16Support(True, "said so by the test"))
    monkeypatch.setattr(precision, "_one_step", lambda m, d, name, x: precision.PROBE_SECONDS + 1)
    model = GPT(ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=32))
    choice = precision.choose_dtype(model, torch.device("cpu"), 4)
    assert choice.dtype == "float32" and not (tmp_path / precision.CHOICES_FILE).exists()
    assert "inf" not in choice.words() and "not remembered" in choice.words()


def test_float16_needs_a_gpu():
    model = GPT(ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=1, n_embd=16))
    with pytest.raises(RepytilianError, match="float16 is for CUDA"):
        resolve_dtype("float16", torch.device("cpu"), model, 4)


def test_bf16_training_is_stored_and_resumes_exactly(corpus_file, tmp_path):
    from repytilian.trainer import StopRequest

    over = {"dtype": "bfloat16", "max_iters": 30}
    straight = train(options(corpus_file, tmp_path / "a", **over))
    assert json.loads((tmp_path / "a" / "m" / "config.json").read_text())["train"]["dtype"] == "bfloat16"
    paused = options(corpus_file, tmp_path / "b", **over)
    paused.stop = StopRequest(at_step=15)
    first = train(paused)
    resumed = train(TrainOptions(data=DataSource("file", str(corpus_file)), load=str(first.saved_to),
                                 out=str(tmp_path / "b" / "m"), progress=False))
    a, b = straight.language_model.model.state_dict(), resumed.language_model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failing_compile_falls_back_to_eager(corpus_file, tmp_path, monkeypatch, caplog):
    def broken(model, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no C++ compiler")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    result = train(options(corpus_file, tmp_path, compile=True))
    assert result.state.step == 50
    assert "torch.compile failed" in caplog.text


def test_a_time_budget_ends_training_and_the_schedule():
    cfg = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=0, max_iters=None, max_seconds=10)
    state = TrainState(max_iters=None)
    state.train_seconds = 5.0
    assert 0.1 < learning_rate(100, cfg, state) < 1.0
    state.train_seconds = 10.0
    assert learning_rate(100, cfg, state) == pytest.approx(0.1)


def test_budget_from_the_command_line(corpus_file, tmp_path):
    r = run_script("training.py", "-d", str(corpus_file), "-m", "m", "-i", "forever", "--budget", "1.5", "-t", "0",
                   *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    summary = saved["summary"]
    # Ended by the budget (an endless run finished), not before it, with the schedule at its end;
    # how many steps fit in 1.5 s depends on the machine, so it is not asserted.
    assert summary["finished"] and summary["train_seconds"] >= 1.5 and summary["step"] >= 1
    # (a machine so loaded that the budget ended inside the warm-up is still warming up)
    in_warmup = summary["step"] <= saved["train"]["warmup_iters"]
    assert in_warmup or summary["last_eval"]["lr"] == pytest.approx(saved["train"]["min_lr"])
    # the whole run's time beside the budget's: "finished N steps in 5s" read as a budget overrun
    said = re.search(r"finished [\d,]+ steps in (\d+)s, (\d+)s of them training; val loss over", r.stderr)
    assert said and abs(int(said[2]) - summary["train_seconds"]) <= 1 and int(said[1]) >= int(said[2]), r.stderr


@pytest.mark.parametrize("args, message", [
    (["--dtype", "float16"], "float16 is for CUDA"),
    (["--budget", "0"], "time budget must be more than 0"),
])
def test_bad_precision_and_budget_flags(corpus_file, tmp_path, args, message):
    r = run_script("training.py", "-d", str(corpus_file), "-m", "m", "-i", "quick", *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_a_budget_alone_is_not_cut_short_by_the_default_steps(corpus_file):
    # Was: -i default's 2,000 steps also ended a --budget run (README: "with -i, whichever ends first").
    lines = []
    result = train(TrainOptions(data=DataSource("file", str(corpus_file)), progress=False, out=None,
                                overrides={**TINY_OVERRIDES, "max_seconds": 0.5}), log=lines.append)
    assert result.state.max_iters is None and result.state.train_seconds >= 0.5
    assert any(line.startswith("training for 0.5 s. PID") for line in lines), lines
    capped = train(TrainOptions(data=DataSource("file", str(corpus_file)), progress=False, out=None, iterations="quick",
                                overrides={**TINY_OVERRIDES, "max_seconds": 60}), log=lambda m: None)
    assert capped.state.step == 50  # with -i, whichever ends first


def scripted_steps(busy_from: int, busy_factor: float = 3.0, fp32: float = 0.010, bf16: float = 0.006):
    """A step timer for a CPU where bf16 is 1.67x faster, while another program takes the cores from
    the `busy_from`-th timed step on."""
    calls = []

    def step(model, device, name, x):
        calls.append(name)
        seconds = fp32 if name == "float32" else bf16
        return seconds * (busy_factor if len(calls) > busy_from else 1.0)
    return step, calls


def test_the_choice_holds_up_when_the_machine_gets_busy_halfway(monkeypatch, tmp_path):
    import repytilian.runtime.precision as precision

    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: precision.Bf16Support(True, "said so by the test"))
    # Busy from the 5th step on: timed one format after the other, every bf16 step fell in the busy
    # half and float32 won (the remembered mistake); timed in turn, both see quiet steps.
    step, calls = scripted_steps(busy_from=4)
    monkeypatch.setattr(precision, "_one_step", step)
    model = GPT(ModelConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=32))
    told = []
    assert resolve_dtype("auto", torch.device("cpu"), model, 4, tell=told.append) == "bfloat16"
    assert calls[2:6] == ["float32", "bfloat16", "bfloat16", "float32"]  # after the two warm-ups: in turn
    (words,) = told
    assert "number format bfloat16" in words and "10.0 ms in float32, 6.0 ms in bfloat16, 1.67x" in words
    # ...and a measurement that busy is not remembered: the next run measures again
    assert "not remembered" in words and not (tmp_path / precision.CHOICES_FILE).exists()
    assert "Remembered in" not in words  # (was: "Remembered in ...; ... so it is not remembered")
    quiet, _ = scripted_steps(busy_from=10**6)
    monkeypatch.setattr(precision, "_one_step", quiet)
    assert resolve_dtype("auto", torch.device("cpu"), model, 4) == "bfloat16"
    assert (tmp_path / precision.CHOICES_FILE).exists()
    # --measure-dtype measures a remembered choice again
    slower_bf16, calls = scripted_steps(busy_from=10**6, bf16=0.012)
    monkeypatch.setattr(precision, "_one_step", slower_bf16)
    assert resolve_dtype("auto", torch.device("cpu"), model, 4) == "bfloat16" and calls == []
    assert resolve_dtype("auto", torch.device("cpu"), model, 4, remeasure=True) == "float32" and calls


def test_a_run_faster_than_its_remembered_figures_measures_again_and_switches(monkeypatch, tmp_path, corpus_file):
    import repytilian.runtime.precision as precision

    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_bf16", lambda: precision.Bf16Support(True, "said so by the test"))
    monkeypatch.setattr(precision, "RECHECK_SECONDS", 0.0)
    # Remembered: float32, from figures taken on a busy machine (a step of 32 tokens took 5 s)
    vocab = len(set(corpus_file.read_text(encoding="utf-8")))  # the characters tokenizer's
    model = GPT(ModelConfig(vocab_size=vocab, block_size=32, n_layer=1, n_head=2, n_embd=32))
    key = precision.choice_key(model, precision.timing_batch(model, 8))
    (tmp_path / precision.CHOICES_FILE).write_text(json.dumps({key: {
        "dtype": "float32", "float32": 5.0, "bfloat16": 5.0, "batch": 8, "tokens": 256, "spread": 1.0,
        "date": "2026-12-01"}}))
    step, _ = scripted_steps(busy_from=10**6)  # measured again on a quiet machine: bf16 is faster
    monkeypatch.setattr(precision, "_one_step", step)
    lines = []
    result = train(options(corpus_file, tmp_path, dtype="auto", max_iters=30), log=lines.append)
    said = [line for line in lines if "measured on a busy machine" in line]
    assert len(said) == 1 and "training continues in bfloat16 from step" in said[0], lines
    assert result.language_model.meta["train"]["dtype"] == "bfloat16"  # what a resume computes in
    kept = json.loads((tmp_path / precision.CHOICES_FILE).read_text())[key]
    assert kept["dtype"] == "bfloat16" and kept["float32"] == 0.010


def test_a_fine_tune_trains_in_this_machines_number_format_not_the_bases(corpus_file, tmp_path):
    """A model trained in bf16 elsewhere (the shipped v3c) and fine-tuned on a CPU without native bf16
    trained in bf16 there too, about 100x slower than float32; a new run takes `dtype` auto."""
    train(options(corpus_file, tmp_path, dtype="bfloat16", max_iters=2))
    assert json.loads((tmp_path / "m" / "config.json").read_text())["train"]["dtype"] == "bfloat16"
    shutil.rmtree(tmp_path / "m" / "trainer_state")  # shipped as v3c is: weights, no optimiser state
    r = run_script("training.py", "-l", "m", "-d", str(corpus_file), "-m", "tuned", "--iters", "2", "-t", "0",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tuned = json.loads((tmp_path / "tuned" / "config.json").read_text())["train"]["dtype"]
    assert tuned == resolve_dtype("auto", torch.device("cpu"), GPT(ModelConfig(**{
        k: v for k, v in TINY_OVERRIDES.items() if k in ModelConfig.__dataclass_fields__}, vocab_size=20)), 8) \
        or cpu_bf16().native  # where bf16 is native, auto measures this shape and may take either
    assert "no native bf16" not in r.stderr
    told = run_script("training.py", "-l", "m", "-d", str(corpus_file), "-m", "told", "--iters", "1", "-t", "0",
                      "--dtype", "bfloat16", cwd=tmp_path)  # asked for: as asked
    assert json.loads((tmp_path / "told" / "config.json").read_text())["train"]["dtype"] == "bfloat16", told.stderr


def test_compile_pays_when_faster_by_enough_to_repay_its_compile():
    from repytilian.runtime.compile_choice import pays, steps_left

    assert pays(eager=0.514, compiled=0.451, compile_seconds=17, steps_left=1_000)  # v3c, 15 minutes
    assert not pays(eager=0.514, compiled=0.451, compile_seconds=17, steps_left=200)  # saves 12.6 s
    assert not pays(eager=0.100, compiled=0.097, compile_seconds=1, steps_left=10 ** 9)  # 1.03x: rounding for nothing
    assert steps_left(5000, 3, None, 0.5) == 4997 and steps_left(None, 3, 900.0, 0.5) == 1800
    assert steps_left(5000, 3, 90.0, 0.5) == 180 and steps_left(None, 3, None, 0.5) == 10 ** 9


class FakeCompile:
    """Stands in for torch.compile (tens of seconds on a CPU): `slower` makes 'compiled' steps run
    the model twice, so measuring them can only say no."""

    def __init__(self, slower: bool):
        self.slower, self.compiled, self.calls = slower, 0, 0

    def __call__(self, model, *args, **kwargs):
        self.compiled += 1

        def run(*a, **k):
            self.calls += 1
            if self.slower:
                model(*a, **k)
            return model(*a, **k)
        return run


def test_compile_auto_measures_a_long_run_once_and_leaves_its_training_untouched(corpus_file, tmp_path, monkeypatch):
    from repytilian.runtime import compile_choice

    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(compile_choice, "MIN_RUN_SECONDS", 0.0)  # every run counts as long
    fake = FakeCompile(slower=True)
    monkeypatch.setattr(torch, "compile", fake)
    notes = []
    measured = train(options(corpus_file, tmp_path / "a", dropout=0.1), log=notes.append)
    said = [n for n in notes if "torch.compile off (`compile` auto, measured just now" in n]
    assert len(said) == 1 and "from step 4" in said[0] and fake.compiled == 1
    told = [i for i, n in enumerate(notes) if "timing eager and compiled steps" in n]
    assert len(told) == 1 and told[0] < notes.index(said[0])  # the wait is announced before it starts
    assert measured.language_model.meta["train"]["compile"] is False
    # the measuring took its steps aside: the model is the one an eager run of the same seed gives
    eager = train(options(corpus_file, tmp_path / "b", dropout=0.1, compile=False))
    a, b = measured.language_model.model.state_dict(), eager.language_model.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    if (tmp_path / "home" / compile_choice.CHOICES_FILE).exists():  # not kept where this machine was busy
        notes.clear()
        train(options(corpus_file, tmp_path / "c", dropout=0.1), log=notes.append)
        assert [n for n in notes if "torch.compile off (`compile` auto, measured here on" in n]
        assert fake.compiled == 1 and not [n for n in notes if "timing eager" in n]  # remembered: not measured again


def test_compile_auto_switches_a_long_run_to_compiled_steps_where_it_pays(corpus_file, tmp_path, monkeypatch):
    from repytilian.runtime import compile_choice

    monkeypatch.setattr(compile_choice, "MIN_RUN_SECONDS", 0.0)
    # this machine's figures, remembered: over the 47 steps left they repay a 2 s compile, not a 17 s one
    kept = {"compile": True, "eager": 0.5, "compiled": 0.4, "compile_seconds": 2.0, "spread": 1.0,
            "date": "2026-12-03"}
    monkeypatch.setattr(compile_choice, "read_choices", lambda name: type("Any", (dict,), {"get": lambda self, key: kept})())
    fake = FakeCompile(slower=False)
    monkeypatch.setattr(torch, "compile", fake)
    notes = []
    result = train(options(corpus_file, tmp_path, dropout=0.1), log=notes.append)
    assert [n for n in notes if "torch.compile on (`compile` auto, measured here on 2026-12-03" in n]
    assert result.state.step == 50 and result.language_model.meta["train"]["compile"] is True
    assert fake.calls == 50 - compile_choice.CHECK_STEP  # every step after the check went through it
    kept["compile_seconds"] = 17.0
    notes.clear()
    result = train(options(corpus_file, tmp_path / "b", dropout=0.1), log=notes.append)
    assert [n for n in notes if "torch.compile off (`compile` auto, measured here on 2026-12-03" in n]
    assert result.language_model.meta["train"]["compile"] is False and fake.calls == 50 - compile_choice.CHECK_STEP
