import math

import pytest
import torch

from repytilian.attention import causal_attention, explicit_causal_attention
from repytilian.model import GPT, ModelConfig


def tiny_config(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16), **kw})


def test_shapes_and_initial_loss_near_uniform():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    idx = torch.randint(20, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, 20)
    assert abs(loss.item() - math.log(20)) < 0.3  # small init: nearly uniform predictions


def test_head_is_tied_to_the_token_embedding():
    model = GPT(tiny_config())
    assert model.lm_head.weight is model.transformer.wte.weight


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(tiny_config()).eval()
    a = torch.randint(20, (1, 10))
    b = a.clone()
    b[0, 7:] = (b[0, 7:] + 1) % 20  # change only the future
    la, _ = model(a)
    lb, _ = model(b)
    assert torch.allclose(la[0, :7], lb[0, :7], atol=1e-6)


@pytest.mark.parametrize("T", [1, 5, 64])
def test_written_out_attention_equals_the_fused_kernel(T):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 8) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(explicit_causal_attention(q, k, v), expected, atol=1e-6)
    # bf16 inputs (as under autocast) take the written-out path on a CPU for short contexts
    low = causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert low.dtype == torch.bfloat16 and torch.allclose(low.float(), expected, atol=0.05)


@pytest.mark.machine
def test_bf16_autocast_training_matches_float32_and_causality_holds():
    torch.manual_seed(0)
    model = GPT(tiny_config(dropout=0.1))
    idx = torch.randint(20, (3, 16))
    model.eval()
    ref, ref_loss = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, low_loss = model(idx, idx)
        b = idx.clone()
        b[0, 9:] = (b[0, 9:] + 1) % 20
        changed, _ = model(b)
    assert abs(low_loss.item() - ref_loss.item()) < 0.02
    assert torch.allclose(low.float(), ref, atol=0.05)
    assert torch.equal(changed[0, :9], low[0, :9])  # the future never leaks into the past
    model.train()  # dropout on the attention weights, then a backward pass through it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_context_longer_than_block_size_is_rejected():
    with pytest.raises(ValueError, match="longer than block_size"):
        GPT(tiny_config())(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("bad", [dict(n_embd=10, n_head=3), dict(n_layer=0), dict(dropout=1.5), dict(activation="swish")])
def test_impossible_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        tiny_config(**bad).validate()


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    model = GPT(tiny_config())
    data = torch.arange(16).repeat(4, 1) % 20  # a fixed, learnable sequence
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _, first = model(data[:, :-1], data[:, 1:])
    for _ in range(50):
        _, loss = model(data[:, :-1], data[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first.item() / 4


def test_an_untied_relu_model_with_a_head_bias_decodes_saves_and_loads(tmp_path):
    """The original Repytilian's architecture (imported by `repytilian import-legacy`)."""
    from repytilian.decode import Decoder
    from repytilian.store.folder import load_model_dir, save_model_dir
    from repytilian.tokenizers import CharacterTokenizer

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16,
                      activation="relu", tie_embeddings=False, head_bias=True)
    model = GPT(cfg).eval()
    assert model.lm_head.weight is not model.transformer.wte.weight and model.lm_head.bias is not None
    with torch.no_grad():
        model.lm_head.bias.normal_()
    idx = torch.randint(11, (1, 9))
    full, _ = model(idx)
    decoder = Decoder(model)
    steps = [decoder.forward(idx[:, :4])] + [decoder.forward(idx[:, t:t + 1]) for t in range(4, 9)]
    assert torch.allclose(torch.stack(steps, 1), full[:, 3:], atol=1e-5)
    assert not torch.allclose(full, GPT(ModelConfig(**{**cfg.__dict__, "activation": "gelu"})).eval()(idx)[0])

    save_model_dir(tmp_path / "m", model, CharacterTokenizer(list("abcdefghijk")), {})
    loaded = load_model_dir(tmp_path / "m").model.eval()
    assert torch.equal(loaded(idx)[0], full)


ARCH_VARIANTS = [
    dict(position="rope"),
    dict(norm="rmsnorm", bias=False),
    dict(activation="relu2"),
    dict(activation="swiglu"),
    dict(position="rope", qk_norm=True),
    dict(position="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False),
    dict(position="rope", qk_norm=True, value_embeddings=True),
]


@pytest.mark.machine
@pytest.mark.parametrize("arch", ARCH_VARIANTS)
def test_every_architecture_option_trains_decodes_with_the_cache_and_round_trips(arch, tmp_path):
    from repytilian.decode import Decoder
    from repytilian.sampling import SamplingOptions, sample_ids
    from repytilian.store.folder import load_model_dir, save_model_dir
    from repytilian.tokenizers import CharacterTokenizer

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, **arch))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(11, (4, 16))
    first = None
    for _ in range(5):
        _, loss = model(x, x.roll(-1, dims=1))
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    model.eval()
    idx = torch.randint(11, (2, 16))
    full, _ = model(idx)
    decoder = Decoder(model, batch_size=2)
    steps = [decoder.forward(idx[:, :5])] + [decoder.forward(idx[:, t:t + 1]) for t in range(5, 16)]
    assert torch.allclose(torch.stack(steps, 1), full[:, 4:], atol=1e-5)
    greedy = SamplingOptions(temperature=0)
    cached = [int(t) for t in sample_ids(model, [1, 2, 3], 40, greedy, use_cache=True)]
    assert cached == [int(t) for t in sample_ids(model, [1, 2, 3], 40, greedy, use_cache=False)]
    save_model_dir(tmp_path / "m", model, CharacterTokenizer(list("abcdefghijk")), {})
    assert torch.equal(load_model_dir(tmp_path / "m").model.eval()(idx)[0], full)


def test_qk_norm_under_bf16_autocast_gets_its_input_in_the_norms_format(monkeypatch):
    """The queries and keys come out of a bf16 matrix product; given to a float32 norm as they are,
    torch warned ("Mismatch dtype ... Cannot dispatch to fused implementation") in the middle of a
    bf16 training run and took its slow way to the same float32 result."""
    from torch.nn import functional as F

    seen = []

    def rms_norm(x, shape, weight=None, eps=None):
        seen.append((x.dtype, weight.dtype))
        return rms_norm_itself(x, shape, weight, eps)
    rms_norm_itself = F.rms_norm
    monkeypatch.setattr(F, "rms_norm", rms_norm)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16, position="rope", qk_norm=True))
    idx = torch.randint(11, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(idx)
    assert len(seen) == 2 and all(x == w == torch.float32 for x, w in seen)


def test_value_embeddings_add_each_tokens_learned_vector_to_every_layers_values():
    """With each layer's gate at 0 the model is the one without them (the same other weights); with
    the gates open the values, and so the logits, depend on the table; a grown vocabulary grows it
    (new rows the old rows' mean); Muon leaves the table to AdamW, as the other embeddings."""
    from repytilian.optim import MuonWithAdamW

    torch.manual_seed(0)
    shape = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, position="rope")
    model = GPT(ModelConfig(**shape, value_embeddings=True)).eval()
    plain = GPT(ModelConfig(**shape)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "vte" not in k and "ve_gate" not in k})
    idx = torch.randint(11, (2, 16))
    gated = model(idx)[0]
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.ve_gate.zero_()
    assert torch.equal(model(idx)[0], plain(idx)[0])
    assert not torch.allclose(gated, plain(idx)[0], atol=1e-3)
    table = model.transformer.vte.weight.detach().clone()
    model.grow_vocabulary(13)
    assert model.transformer.vte.weight.shape == (13, 16)
    assert torch.equal(model.transformer.vte.weight[:11], table)
    assert torch.allclose(model.transformer.vte.weight[12], table.mean(0))
    optimizer = MuonWithAdamW(model, 1e-3, 0.1, (0.9, 0.99), fused=False)
    assert not any(p is model.transformer.vte.weight for g in optimizer.muon.param_groups for p in g["params"])


def test_rope_makes_attention_depend_on_relative_positions_only():
    """A model without position embeddings, with RoPE: shifting a window of the same tokens does
    not change the scores, as the rotation depends only on the distance between positions."""
    from repytilian.model import apply_rope, rope_tables

    cos, sin = rope_tables(32, 8)
    q, k = torch.randn(8), torch.randn(8)
    scores = [(apply_rope(q, cos[i + 3], sin[i + 3]) @ apply_rope(k, cos[i], sin[i])).item() for i in range(20)]
    assert max(scores) - min(scores) < 1e-4


@pytest.mark.parametrize("arch", [dict(), dict(position="rope", qk_norm=True)])
def test_the_model_with_a_kv_cache_gives_its_logits_without_one_in_chunks_of_any_size(arch):
    """One forward pass: GPT.forward with a cache (prefill, then chunks that start after cached
    positions and so need a mask, then single tokens) equals the whole sequence at once."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16, **arch)).eval()
    idx = torch.randint(11, (2, 16))
    full, _ = model(idx)
    cache = model.new_cache(batch_size=2)
    pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in [(0, 4), (4, 7), (7, 8), (8, 13), (13, 16)]]
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    assert cache.length == 16
    with pytest.raises(ValueError, match="holds 16 positions; 17"):
        model(idx[:, :1], cache=cache)


def test_decoding_leaves_the_model_as_it_was_and_shares_its_weights():
    from repytilian.decode import Decoder

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = [type(m) for m in model.modules()]
    decoder = Decoder(model, dtype=torch.bfloat16)
    decoder.forward(torch.zeros(1, 3, dtype=torch.long))
    assert [type(m) for m in model.modules()] == modules
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert decoder.model.transformer.wte.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # shared
    model.train()
    _, loss = model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    loss.backward()  # the model still trains after a decoder was made from it
    assert model.lm_head.weight.grad is not None


def test_float16_decoding_steps_few_rows_in_float16_and_more_in_float32():
    from repytilian.decode import HALF_ROWS, Decoder

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()
    exact, half = Decoder(model, HALF_ROWS + 1, torch.float32), Decoder(model, HALF_ROWS + 1, torch.float16)
    prompt = torch.randint(0, 11, (HALF_ROWS + 1, 5))
    for rows in (1, HALF_ROWS, HALF_ROWS + 1):
        exact.reset(), half.reset()
        # the prompt (5 tokens a row: more than HALF_ROWS rows of the product) goes through float32 in both
        assert torch.equal(half.forward(prompt[:rows]), exact.forward(prompt[:rows]))
        step = torch.randint(0, 11, (rows, 1))
        want, got = exact.forward(step), half.forward(step)
        if rows > HALF_ROWS:
            assert torch.equal(got, want)
        else:  # float16 weights: close, not equal (10 bits of mantissa)
            assert not torch.equal(got, want) and torch.allclose(got, want, atol=2e-2, rtol=1e-2)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch's own imports
def test_a_compiled_relu_model_keeps_no_boolean_mask_for_its_backward_and_its_gradients_are_relus():
    from repytilian.model import relu

    # Was: inductor's ReLU kept a boolean mask for the backward, which its CPU code writes slowly
    # (a compiled `tiny` step with ReLU 1.6x the eager one, in float32 and bf16)
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, block_size=16, n_layer=1, n_head=2, n_embd=32, activation="relu",
                            dropout=0.0))
    x = torch.randint(20, (4, 16))
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: (kept.append(t.dtype), t)[1], lambda t: t):
        _, loss = torch.compile(model)(x, x)
    loss.backward()
    assert kept and torch.bool not in kept
    # the same function and gradient as F.relu, zeros and negatives included
    w = torch.randn(64)
    grads = []
    for f in (lambda v: torch.nn.functional.relu(v) * w, torch.compile(lambda v: relu(v) * w)):
        v = torch.tensor([-2.0, -0.0, 0.0, 0.5, 3.0, -1e-30, 1e-30, 7.0] * 8, requires_grad=True)
        out = f(v)
        out.sum().backward()
        grads.append((out.detach(), v.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
