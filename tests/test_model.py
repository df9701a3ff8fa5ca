import math

import pytest
import torch

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
    from repytilian.checkpoint import load_model_dir, save_model_dir
    from repytilian.decode import Decoder
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
