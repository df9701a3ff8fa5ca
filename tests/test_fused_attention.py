"""Attention with dropout in one pass (fused_attention.c): the written-out attention, mask for mask."""
import math

import pytest
import torch

from repytilian import dropout
from repytilian.attention import (
    causal_attention,
    explicit_causal_attention,
    use_cpu_dropout_kernel,
)
from repytilian.model import GPT, ModelConfig
from repytilian.runtime import fused_attention
from repytilian.runtime.fused_attention import (
    _call,
    fused_causal_attention,
    keep_mask,
    usable,
)


@pytest.fixture(autouse=True)
def built():
    """Installed within each test (in its own cache folder), never at collection (in the user's),
    and taken away after."""
    if not fused_attention.install():
        pytest.skip("fused_attention.c could not be built here (no C compiler)")
    yield
    use_cpu_dropout_kernel(None)
    dropout.use_cpu_kernel(None)


def heads(B, H, T, D, seed=0):
    """(B, nh, T, hs) queries, keys and values laid out as the model's (views of one (B, T, 3, nh, hs) tensor)."""
    torch.manual_seed(seed)
    qkv = torch.randn(B, T, 3, H, D).requires_grad_()
    return qkv, qkv.permute(2, 0, 3, 1, 4).unbind(0)


def written_out(q, k, v, p, seed):
    """The lecture's attention, its weights dropped where keep_mask says."""
    B, H, T, D = q.shape
    kept = keep_mask(seed, (B * H, T, T), p).view(B, H, T, T)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)
    weights = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    return (weights * kept) @ v * (65536 / (65536 - round(p * 65536)))


def next_seed():
    """The seed fused_causal_attention draws next from torch's generator, without drawing it."""
    state = torch.get_rng_state()
    seed = int(torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64))
    torch.set_rng_state(state)
    return seed


@pytest.mark.parametrize("shape", [(2, 3, 37, 8), (2, 2, 16, 24), (1, 2, 130, 64), (3, 1, 1, 16)])
def test_it_is_the_written_out_attention_with_the_same_mask_forward_and_backward(shape):
    qkv, (q, k, v) = heads(*shape)
    seed = next_seed()
    fused = fused_causal_attention(q, k, v, 0.2)
    grad = torch.randn_like(fused)
    fused.backward(grad)
    fused_grad, qkv.grad = qkv.grad, None
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    reference = written_out(q, k, v, 0.2, seed)
    reference.backward(grad)
    assert torch.allclose(fused, reference, atol=1e-5)
    assert torch.allclose(fused_grad, qkv.grad, atol=1e-5)


@pytest.mark.parametrize("bf16", ["qkv", "v"])  # all three as plain bf16; v alone, as autocast hands them over
def test_bf16_inputs_are_computed_in_float32_at_least_as_closely_as_autocast_writes_them_out(bf16):
    _, (q, k, v) = heads(2, 3, 40, 16)
    inputs = [t.detach().bfloat16() if bf16 == "qkv" or t is v else t.detach() for t in (q, k, v)]
    grad = torch.randn(2, 3, 40, 16).bfloat16()
    seed = next_seed()

    def run(way, dtype=None):
        """The result and gradients of `way` on copies of the inputs (in `dtype` if given)."""
        xs = [t.to(dtype or t.dtype, copy=True).requires_grad_() for t in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=way is written_out and dtype is None):
            out = way(*xs, 0.2, seed) if way is written_out else way(*xs, 0.2)
        out.backward(grad.to(out.dtype))
        return [out, *(x.grad for x in xs)]

    fused, exact, autocast = run(fused_causal_attention), run(written_out, torch.float32), run(written_out)
    assert [t.dtype for t in fused] == [torch.bfloat16, *(t.dtype for t in inputs)]  # as autocast's
    for got, want, theirs in zip(fused, exact, autocast):
        error, autocast_error = (got.float() - want).abs().max(), (theirs.float() - want).abs().max()
        assert error <= autocast_error and error < 0.01 * want.abs().max()
    # the result is rounded once: within half a bf16 step (1/256 of its power of two) of float32's
    step = exact[0].detach().abs().clamp_min(1e-30).log2().floor().exp2() / 128
    assert ((fused[0].float() - exact[0].detach()).abs() <= step * 0.5 + 1e-6).float().mean() > 0.99


def test_bf16_takes_the_kernel_only_where_it_was_timed_faster_at_the_runs_shape(tmp_path, monkeypatch):
    from repytilian.runtime.precision import read_choices

    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    _, (q, k, v) = heads(2, 2, 16, 16)
    half = [t.bfloat16() for t in (q, k, v)]
    state = torch.get_rng_state()
    fused_attention.install(bf16_at=(2, 2, 16, 16))  # timed here: the first time on this machine
    assert torch.equal(torch.get_rng_state(), state)  # the run's random stream untouched by timing
    [(key, figures)] = read_choices(fused_attention.CHOICES_FILE).items()
    assert "(2, 2, 16, 16)" in key and figures["one_pass_ms"] > 0 and figures["written_out_ms"] > 0
    assert figures["one_pass"] == (figures["one_pass_ms"] < figures["written_out_ms"])
    assert usable(*half, 0.1) == figures["one_pass"] and usable(q, k, v, 0.1)
    for remembered in (False, True):  # found again, not timed again: each answer is followed
        (tmp_path / fused_attention.CHOICES_FILE).write_text(f'{{"{key}": {{"one_pass": {str(remembered).lower()}}}}}')
        fused_attention.install(bf16_at=(2, 2, 16, 16))
        assert usable(*half, 0.1) is remembered and usable(q, k, v, 0.1)  # float32 always
        assert usable(q, k, half[2], 0.1) is remembered  # autocast's mix
    fused_attention.install()  # a float32 run afterwards: bf16 written out again
    assert not usable(*half, 0.1)


def test_weights_are_kept_with_probability_one_minus_p_and_the_mean_over_masks_is_the_attention():
    kept = keep_mask(12345, (64, 128, 128), 0.1)
    assert abs(kept.float().mean().item() - 0.9) < 0.002  # 1M draws: a standard deviation of 0.0003
    _, (q, k, v) = heads(1, 2, 12, 8, seed=4)
    q, k, v = q.detach(), k.detach(), v.detach()
    whole = explicit_causal_attention(q, k, v, 0.0)
    mean = torch.stack([fused_causal_attention(q, k, v, 0.2) for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, whole, atol=0.06)


def test_the_model_uses_it_in_training_on_a_cpu_and_the_written_out_way_without_it(monkeypatch):
    _, (q, k, v) = heads(2, 2, 16, 16)
    assert usable(q, k, v, 0.1)
    assert not usable(q, k, v, 0.0) and not usable(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.1)
    assert not usable(q[..., :12], k[..., :12], v[..., :12], 0.1)  # head sizes a multiple of 8 only
    seed = next_seed()
    assert torch.allclose(causal_attention(q, k, v, 0.3), written_out(q, k, v, 0.3, seed), atol=1e-5)
    monkeypatch.setenv("REPYTILIAN_NO_NATIVE", "1")
    assert not fused_attention.install() and not usable(q, k, v, 0.1)
    torch.manual_seed(7)
    without = causal_attention(q, k, v, 0.3)
    torch.manual_seed(7)
    assert torch.equal(without, explicit_causal_attention(q, k, v, 0.3))
    monkeypatch.delenv("REPYTILIAN_NO_NATIVE")
    assert fused_attention.install()
    use_cpu_dropout_kernel(None)  # not installed (a model trained by hand): written out as well
    torch.manual_seed(7)
    assert torch.equal(causal_attention(q, k, v, 0.3), without)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_compiled_model_calls_it_as_one_operator_without_breaking_its_graph(dtype, monkeypatch):
    monkeypatch.setattr(fused_attention, "_bf16", True)  # as where bf16 was timed faster
    calls = []
    monkeypatch.setattr(fused_attention, "_call", lambda *a: calls.append(a) or _call(*a))
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1,
                            norm="rmsnorm", qk_norm=True)).train()  # q and k normalised in float32 under autocast
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # tracing and the fake kernels; no C++
    ids = torch.randint(0, 20, (3, 16))
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        _, loss = compiled(ids, ids)
    loss.backward()
    assert len(calls) == 4  # two layers, forward and backward
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_it_is_built_once_per_machine_and_a_missing_compiler_is_an_error_the_caller_can_catch(tmp_path, monkeypatch):
    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    built = fused_attention._built()
    assert built.parent == tmp_path / "native" and built.exists()
    mtime = built.stat().st_mtime_ns
    assert fused_attention._built() == built and built.stat().st_mtime_ns == mtime  # found, not built again
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(RuntimeError, match="/bin/false failed"):
        fused_attention._built()
    assert not any((tmp_path / "elsewhere" / "native").iterdir())  # no half-built file left behind


def test_a_model_uses_it_only_in_training_and_in_evaluation_is_the_model_without_dropout():
    calls = []

    def counting(q, k, v, p):
        calls.append(p)
        return fused_attention.fused_or_none(q, k, v, p)
    use_cpu_dropout_kernel(counting)
    cfg = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)
    torch.manual_seed(0)
    with_dropout, without = GPT(ModelConfig(**cfg, dropout=0.3)), GPT(ModelConfig(**cfg, dropout=0.0))
    without.load_state_dict(with_dropout.state_dict())
    ids = torch.randint(0, 20, (3, 16))
    assert torch.equal(with_dropout.eval()(ids)[0], without.eval()(ids)[0]) and calls == []
    with_dropout.train()
    assert not torch.equal(with_dropout(ids)[0], without(ids)[0]) and calls == [0.3, 0.3]  # one call a layer


def test_a_compiler_that_fails_leaves_a_note_and_the_written_out_attention(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CC", "/bin/false")
    monkeypatch.setenv("REPYTILIAN_HOME", str(tmp_path))
    for name, value in (("_lib", None), ("_tried", False), ("_ready", False)):  # a process that never looked
        monkeypatch.setattr(fused_attention, name, value)
    assert not fused_attention.install()
    assert "could not be built or loaded" in caplog.text and "written out" in caplog.text
    _, (q, k, v) = heads(1, 2, 8, 8)
    assert not usable(q, k, v, 0.2)
    torch.manual_seed(3)
    taken = causal_attention(q, k, v, 0.2)
    torch.manual_seed(3)
    assert torch.equal(taken, explicit_causal_attention(q, k, v, 0.2))
    caplog.clear()
    assert not fused_attention.install() and "could not" not in caplog.text  # said once a process


def test_a_training_run_on_a_cpu_installs_it_where_its_model_drops_out_attention_weights(corpus_file, tmp_path):
    from conftest import TINY_OVERRIDES

    from repytilian import attention
    from repytilian.api import TrainOptions, train
    from repytilian.data import DataSource
    from repytilian.runtime import fused_dropout
    from repytilian.runtime.precision import read_choices

    def run(**overrides):
        use_cpu_dropout_kernel(None)
        dropout.use_cpu_kernel(None)
        train(TrainOptions(data=DataSource("file", str(corpus_file)), iterations="quick", out=None, progress=False,
                           device="cpu", overrides={**TINY_OVERRIDES, "max_iters": 2, **overrides}))
        return attention._cpu_dropout_kernel, dropout._cpu_kernel

    assert run(dropout=0.1) == (fused_attention.fused_or_none, fused_dropout)
    assert run(dropout=0.1, attention_dropout=0.0)[1] is fused_dropout  # the residual branches' dropout
    assert run(dropout=0.0) == (None, None)
    assert not read_choices(fused_attention.CHOICES_FILE)  # float32, or no attention dropout: nothing timed
    assert run(dropout=0.1, attention_dropout=0.0, dtype="bfloat16", max_iters=1)[1] is fused_dropout
    assert not read_choices(fused_attention.CHOICES_FILE)
    assert run(dropout=0.1, dtype="bfloat16", max_iters=1)[0] is fused_attention.fused_or_none
    [key] = read_choices(fused_attention.CHOICES_FILE)  # bf16's way timed at the run's attention
    assert key.endswith("(8, 2, 32, 16)")  # (batch, heads, context, head size) of TINY_OVERRIDES
