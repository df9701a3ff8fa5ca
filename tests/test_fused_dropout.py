"""Dropout in one pass (fused_attention.c's dropout_apply): dropout.py's rule and modes, its mask
hashed from one seed of torch's generator, the same mask in the backward pass."""
import pytest
import torch

from repytilian import dropout as module
from repytilian.dropout import Dropout, dropout
from repytilian.runtime import fused_attention, fused_dropout
from repytilian.runtime.fused_dropout import keep_mask, usable


@pytest.fixture(autouse=True)
def built():
    if not fused_attention.install():
        pytest.skip("fused_attention.c could not be built here (no C compiler)")
    yield
    module.use_cpu_kernel(None)


def next_seed() -> int:
    """The seed hashed_dropout will draw next (torch's generator, not advanced)."""
    state = torch.get_rng_state()
    seed = int(torch.randint(-(1 << 63), (1 << 63) - 1, (1,), dtype=torch.int64))
    torch.set_rng_state(state)
    return seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4, 16, 24), (7, 3), (1,)])  # odd sizes: the last value alone
def test_it_keeps_what_the_python_mask_keeps_scaled_exactly(dtype, shape):
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    assert module._cpu_kernel is fused_dropout and usable(x, 0.1)
    seed = next_seed()
    y = dropout(x, 0.1)
    kept = keep_mask(seed, x.numel(), 0.1).view(shape)
    scale = 65536 / (65536 - round(0.1 * 65536))
    assert y.dtype == dtype and torch.equal(y, torch.where(kept, x * scale, torch.zeros((), dtype=dtype)))


def test_values_are_kept_with_probability_one_minus_p_and_the_mean_over_masks_is_the_input():
    torch.manual_seed(1)
    for p in (0.1, 0.2, 0.5):
        share = (dropout(torch.ones(4_000_000), p) != 0).float().mean().item()
        assert abs(share - (1 - p)) < 0.002  # 4M draws: a standard deviation of 0.00025 at most
    x = torch.randn(64, 32)
    mean = torch.stack([dropout(x, 0.1) for _ in range(3000)]).mean(0)
    assert torch.allclose(mean, x, atol=0.05 * x.abs().max().item())
    a, b = dropout(x, 0.1), dropout(x, 0.1)
    assert not torch.equal(a != 0, b != 0)  # a new seed, a new mask, every call


def test_the_gradient_takes_the_forward_mask_and_a_strided_input_is_read_as_laid_out():
    torch.manual_seed(2)
    base = torch.randn(40, 50, requires_grad=True)
    x = base.t()  # not contiguous
    seed = next_seed()
    y = dropout(x, 0.3)
    y.backward(torch.ones_like(y))
    kept = keep_mask(seed, x.numel(), 0.3).view(x.shape)
    assert torch.equal(y, torch.where(kept, x * (65536 / (65536 - round(0.3 * 65536))), 0.0))
    assert torch.equal(base.grad.t() != 0, kept)


def test_evaluation_is_untouched_and_other_tensors_take_dropout_pys_masks():
    x = torch.randn(8, 8)
    assert Dropout(0.5).eval()(x) is x
    assert not usable(x.double(), 0.1) and not usable(x, 0.0) and not usable(x, 1.0)
    torch.manual_seed(4)
    y = dropout(x.double(), 0.5)  # float64: torch's generator, as before
    module.use_cpu_kernel(None)
    torch.manual_seed(4)
    assert torch.equal(y, dropout(x.double(), 0.5))


def test_a_compiled_model_calls_it_as_one_operator_without_breaking_its_graph(monkeypatch):
    from repytilian.model import GPT, ModelConfig

    calls = []
    real = fused_dropout.hashed_dropout
    monkeypatch.setattr(fused_dropout, "hashed_dropout", lambda x, p: calls.append(p) or real(x, p))
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.1,
                            attention_dropout=0.0)).train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # tracing and the fake kernel; no C++
    ids = torch.randint(0, 20, (3, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = compiled(ids, ids)
    loss.backward()
    assert len(calls) == 5  # the embeddings and two branches a layer
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
