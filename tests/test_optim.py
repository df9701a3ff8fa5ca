"""clip_and_step: gradient clipping folded into fused AdamW's pass takes the steps that torch's
clip_grad_norm_ followed by the optimiser's step takes."""
import pytest
import torch

from repytilian.config import ModelConfig
from repytilian.model import GPT
from repytilian.optim import clip_and_step, make_optimizer, optimizer_parts


def _pair(name: str, fused: bool = True):
    """Two equal small models, each with its own optimiser of the same kind."""
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(GPT(ModelConfig(vocab_size=20, n_layer=2, n_head=2, n_embd=16, block_size=8, dropout=0.0,
                                    bias=False)))  # no key bias: its gradient, 0 but for rounding, has no direction
    # Muon orthogonalising in float32: in bf16 a rounding's difference in the clipping grows to bf16's
    return [(m, make_optimizer(m, name, 1e-2, 0.1, (0.9, 0.99), fused=fused, ns_dtype=torch.float32))
            for m in models]


def _backward(model: GPT, seed: int, loss_scale: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(20, (4, 8), generator=gen)
    _, loss = model(x, x)
    (loss * loss_scale).backward()


def _steps(name: str, loss_scales: list[float], max_norm: float = 1.0, fused: bool = True):
    """Both ways through the same steps: (torch's way, clip_and_step), each model's parameters."""
    (ref, ref_opt), (new, new_opt) = _pair(name, fused)
    for seed, scale in enumerate(loss_scales):
        for model, opt in ((ref, ref_opt), (new, new_opt)):
            _backward(model, seed, scale)
        if max_norm > 0:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
        ref_opt.step()
        clip_and_step(new_opt, new.parameters(), max_norm)
        for opt in (ref_opt, new_opt):
            opt.zero_grad(set_to_none=True)
    assert not any(hasattr(part, "grad_scale") for part in optimizer_parts(new_opt))
    return dict(ref.named_parameters()), dict(new.named_parameters())


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_steps_within_the_clip_are_bit_for_bit_torchs(name):
    ref, new = _steps(name, [1e-3, 1e-3, 1e-3])  # gradient norms far below 1: nothing clipped
    assert all(torch.equal(ref[k], new[k]) for k in ref)


def test_clipped_steps_are_torchs_to_within_a_rounding():
    ref, new = _steps("adamw", [100.0, 1e-3, 300.0, 50.0])  # clipped, not, clipped, clipped
    for k in ref:
        torch.testing.assert_close(new[k], ref[k], rtol=1e-5, atol=1e-6)
    # and the clipping mattered: unclipped steps end elsewhere
    unclipped, _ = _steps("adamw", [100.0, 1e-3, 300.0, 50.0], max_norm=0)
    assert any(not torch.allclose(unclipped[k], new[k], rtol=1e-3, atol=1e-4) for k in ref)


def test_a_clipped_muon_step_clips_both_parts():
    """Muon's matrices are clipped as torch clips them (bit for bit), the rest in AdamW's pass.
    One step only: Muon's iteration makes later steps' roundings grow (it normalises each update)."""
    ref, new = _steps("muon", [100.0])
    for k in ref:
        if k.startswith("transformer.h.") and ref[k].dim() == 2:
            assert torch.equal(new[k], ref[k]), k
        else:
            torch.testing.assert_close(new[k], ref[k], rtol=1e-5, atol=1e-6)


def test_no_clipping_and_unfused_adamw_are_torchs_own():
    ref, new = _steps("adamw", [100.0, 50.0], max_norm=0)
    assert all(torch.equal(ref[k], new[k]) for k in ref)
    ref, new = _steps("adamw", [100.0, 50.0], fused=False)  # clipped in a pass of its own, as torch does
    assert all(torch.equal(ref[k], new[k]) for k in ref)
