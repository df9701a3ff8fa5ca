"""The CUDA path, on a real GPU: run by `make gpu-check` (benchmarks/gpu_check.py) on a CUDA machine.

Each test skips where torch sees no CUDA GPU, so on a CPU they cost nothing and say why. What
they cover: training steps in bf16, in float16 with the gradient scaler and in float32; resume on
CUDA, exact eagerly and within a rounding through CUDA graphs; torch.compile (on by default on
CUDA) against eager; KV-cached greedy decoding against the full forward pass; torchrun with NCCL on
one GPU; the server generating on CUDA; GPU memory given back after a run.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, TINY_OVERRIDES, checkout_path, make_corpus

from repytilian.api import TrainOptions, train
from repytilian.data import DataSource
from repytilian.trainer import StopRequest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (make gpu-check)")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gpu") / "corpus.txt"
    path.write_text(make_corpus(), encoding="utf-8")
    return path


def options(corpus: Path, out: Path | None, steps: int = 40, **kw) -> TrainOptions:
    overrides = {**TINY_OVERRIDES, "max_iters": steps, "compile": False, "dtype": "bfloat16", "dropout": 0.1,
                 **kw.pop("overrides", {})}
    return TrainOptions(**{"data": DataSource("file", str(corpus)), "device": "cuda", "progress": False, "seed": 1,
                           "overrides": overrides, "out": str(out) if out else None,
                           "interrupt_root": str(corpus.parent / "models"), **kw})


def same_weights(a, b) -> bool:
    a, b = a.language_model.model.state_dict(), b.language_model.model.state_dict()
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_training_steps_learn_in_each_number_format(corpus, dtype):
    result = train(options(corpus, None, steps=60, overrides={"dtype": dtype}))
    metrics = result.state.metrics
    assert result.val_loss is not None and metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert next(result.language_model.model.parameters()).device.type == "cuda"


def test_float16_trains_with_the_gradient_scaler(corpus):
    from repytilian.trainer import Trainer

    seen = []
    real_step = Trainer.train_step

    def watching(self, *args, **kwargs):
        seen.append(self.scaler is not None and self.scaler.is_enabled())
        return real_step(self, *args, **kwargs)

    Trainer.train_step = watching
    try:
        train(options(corpus, None, steps=5, overrides={"dtype": "float16"}))
    finally:
        Trainer.train_step = real_step
    assert seen and all(seen)


def test_resume_on_cuda_is_exact(corpus, tmp_path):
    straight = train(options(corpus, tmp_path / "a"))
    again = train(options(corpus, tmp_path / "a2"))
    assert same_weights(straight, again), "two runs with one seed differ on this GPU: CUDA training is not deterministic"
    first = train(options(corpus, tmp_path / "b", stop=StopRequest(at_step=20)))
    assert first.stopped_by and first.state.step == 20
    resumed = train(TrainOptions(load=str(first.saved_to), out=str(tmp_path / "b"), device="cuda", progress=False,
                                 interrupt_root=str(tmp_path / "models")))
    assert resumed.state.step == 40 and same_weights(straight, resumed)


def test_the_clock_counts_the_gpus_work_not_only_its_launches():
    """A step on a GPU only queues its kernels: the run's training time (which the time budget, the
    schedule and tokens/s read) must include the wait for them. Steps heavy enough that the GPU, not
    the launches, sets the pace; a stop between evaluations (Ctrl+C) ends the timed stretch."""
    import numpy as np

    from repytilian.config import ModelConfig, TrainConfig
    from repytilian.data.corpus import TokenData
    from repytilian.model import GPT
    from repytilian.trainer import Trainer

    ids = np.random.default_rng(0).integers(0, 64, 2_000_000).astype(np.uint16)
    model = GPT(ModelConfig(vocab_size=64, block_size=512, n_layer=4, n_head=8, n_embd=512)).cuda()
    cfg = TrainConfig(batch_size=64, dtype="bfloat16", max_iters=1000, eval_interval=1000, compile=False)
    trainer = Trainer(model, TokenData.split(ids, 0.1), cfg, torch.device("cuda"), report=lambda e: None)
    trainer.run(StopRequest(at_step=3), progress=False)  # kernels picked, memory taken
    torch.cuda.synchronize()
    before, started = trainer.state.train_seconds, time.perf_counter()
    trainer.run(StopRequest(at_step=33), progress=False)
    wall = time.perf_counter() - started
    assert trainer.state.train_seconds - before >= 0.9 * wall, (trainer.state.train_seconds - before, wall)


def test_compiled_training_learns_as_eager_does(corpus):
    eager = train(options(corpus, None, steps=60))
    compiled = train(options(corpus, None, steps=60, overrides={"compile": True}))
    a, b = eager.state.metrics[-1]["val_loss"], compiled.state.metrics[-1]["val_loss"]
    assert abs(a - b) < 0.05, (a, b)  # compiled kernels round differently, not learn differently


def test_compiled_training_replays_cuda_graphs_and_resumes_within_a_rounding(corpus, tmp_path):
    """One process on one GPU trains through CUDA graphs (compile's "reduce-overhead"): recorded, none
    skipped. A resume through them continues the run, not bit for bit (on an H200, 2026-12-04, the
    losses agreed to 4 decimals, the weights not exactly; eager resumes are exact: above)."""
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = {"compile": True}
    straight = train(options(corpus, tmp_path / "a", overrides=compiled))
    assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
    assert counters["inductor"]["cudagraph_recorded_non_static_inputs"] > 0, dict(counters["inductor"])
    first = train(options(corpus, tmp_path / "b", overrides=compiled, stop=StopRequest(at_step=20)))
    resumed = train(TrainOptions(load=str(first.saved_to), out=str(tmp_path / "b"), device="cuda", progress=False,
                                 overrides=compiled, interrupt_root=str(tmp_path / "models")))
    assert resumed.state.step == 40
    a, b = straight.state.metrics[-1], resumed.state.metrics[-1]
    assert abs(a["train_loss"] - b["train_loss"]) < 1e-3 and abs(a["val_loss"] - b["val_loss"]) < 1e-3, (a, b)


def test_compile_is_on_by_default_on_cuda(corpus):
    from repytilian.trainer import Trainer

    compiled = []
    real_init = Trainer.__init__

    def watching(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        compiled.append(self.compiled is not None)

    Trainer.__init__ = watching
    try:
        train(TrainOptions(data=DataSource("file", str(corpus)), device="cuda", progress=False, out=None,
                           overrides={**TINY_OVERRIDES, "max_iters": 3}))
    finally:
        Trainer.__init__ = real_init
    assert compiled == [True]


def test_cached_greedy_decoding_equals_the_full_forward_pass(corpus):
    from repytilian.sampling import SamplingOptions, sample_ids

    lm = train(options(corpus, None, steps=60)).language_model
    ids = lm.tokenizer.encode("the king")
    greedy = SamplingOptions(temperature=0)
    n = lm.model.config.block_size - len(ids)
    cached = sample_ids(lm.model, ids, n, greedy, use_cache=True)
    full = sample_ids(lm.model, ids, n, greedy, use_cache=False)
    assert [int(t) for t in cached] == [int(t) for t in full]


def test_torchrun_on_one_gpu_trains_and_nccl_connects(corpus, tmp_path):
    """One GPU holds one NCCL rank (NCCL refuses two ranks on one device), so torchrun runs one
    process here (a world of one: no group needed) and NCCL is checked by a group of one; two
    processes over NCCL need a machine with two GPUs."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    env = {**os.environ, "PYTHONPATH": checkout_path()}
    done = subprocess.run([*launcher, str(ROOT / "training.py"), "-d", str(corpus), "--iters", "30", *TINY,
                           "--device", "cuda", "-m", str(tmp_path / "m")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "device cuda" in done.stderr and (tmp_path / "m" / "model.safetensors").is_file()
    script = ("import torch, torch.distributed as dist\n"
              "dist.init_process_group('nccl')\n"
              "t = torch.ones(4, device='cuda')\n"
              "dist.all_reduce(t)\n"
              "print('nccl all_reduce', t.sum().item(), dist.get_backend())\n"
              "dist.destroy_process_group()\n")
    (tmp_path / "nccl.py").write_text(script)
    done = subprocess.run([*launcher, str(tmp_path / "nccl.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "nccl all_reduce 4.0 nccl" in done.stdout, done.stderr[-3000:]


def test_the_server_generates_on_cuda(corpus, tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from test_serve import RealServer

    train(options(corpus, tmp_path / "models" / "tiny", steps=30))
    server = RealServer(tmp_path / "models", "--device", "cuda")
    try:
        answer = httpx.post(f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "the king",
                                                                 "max_tokens": 16, "temperature": 0}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] == 16
    finally:
        server.stop()


def test_bench_says_it_times_the_cpu_and_where_the_gpu_is_measured():
    done = subprocess.run([sys.executable, "-m", "repytilian", "bench", "--presets", "tiny", "--dtypes", "float32",
                           "--repeats", "1", "--steps", "2", "--no-loop"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": checkout_path()},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "this times the CPU; the GPU here (" in done.stdout and "make gpu-check" in done.stdout


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "cuda-graphs"])
def test_gpu_memory_is_given_back_after_a_run(corpus, compiled):
    """A run's model, gradients and optimiser state go with it. Compiled, what torch keeps for the
    compiled code and its CUDA graphs stays (on an H200 a few tens of MB), so the baseline is taken
    after a first compiled run: later runs add nothing to it."""
    if compiled:
        train(options(corpus, None, steps=20, overrides={"compile": True}))
        gc.collect()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    result = train(options(corpus, None, steps=20, overrides={"compile": compiled}))
    assert result.language_model.model.transformer.wte.weight.is_cuda  # the trained model is on the GPU...
    assert compiled or torch.cuda.memory_allocated() > before
    del result
    gc.collect()
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() <= before + 1024 * 1024  # ...and nothing is left once it is gone


def test_a_gpu_number_the_machine_does_not_have_is_a_clear_error():
    from repytilian.errors import SettingError
    from repytilian.runtime.device import pick_device

    with pytest.raises(SettingError, match=f"this machine has {torch.cuda.device_count()} CUDA GPU"):
        pick_device(f"cuda:{torch.cuda.device_count()}")  # was: a CUDA error (invalid device ordinal) later on
