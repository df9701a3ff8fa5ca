"""Dropout with cheap masks (dropout.py): the same expectation and modes as nn.Dropout."""
import pytest
import torch

from repytilian.attention import explicit_causal_attention
from repytilian.dropout import Dropout, dropout, dropout_mask
from repytilian.model import GPT, ModelConfig


@pytest.fixture(autouse=True)
def masks_from_torchs_generator():
    """dropout.py's own masks, even where a training run in this process installed the C kernel
    (tests/test_fused_dropout.py tests that one)."""
    from repytilian import dropout as module

    kernel = module._cpu_kernel
    module.use_cpu_kernel(None)
    yield
    module.use_cpu_kernel(kernel)


def test_values_are_kept_with_probability_one_minus_p_and_scaled_to_keep_the_mean():
    torch.manual_seed(0)
    ones = torch.ones(4_000_000)
    for p in (0.1, 0.2, 0.5):
        kept, scale = dropout_mask(ones, p)
        share = kept.float().mean().item()
        assert abs(share - (1 - p)) < 0.002  # 4M draws: a standard deviation of 0.00025 at most
        dropped = round(p * 65536)
        assert scale == 65536 / (65536 - dropped)  # the exact inverse of the share kept on average
        out = dropout(ones, p)
        assert set(out.unique().tolist()) <= {0.0, torch.tensor(scale).float().item()}  # float32 as the data
        assert abs(out.mean().item() - 1) < 0.003


def test_the_mean_over_masks_is_the_input():
    torch.manual_seed(1)
    x = torch.randn(64, 32)
    mean = torch.stack([dropout(x, 0.1) for _ in range(3000)]).mean(0)
    assert torch.allclose(mean, x, atol=0.05 * x.abs().max().item())


def test_the_gradient_flows_through_the_kept_values_only():
    torch.manual_seed(2)
    x = torch.randn(1000, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.3)
    y.sum().backward()
    torch.manual_seed(3)
    kept, scale = dropout_mask(x, 0.3)
    assert torch.equal(x.grad, kept.float() * scale)


def test_nothing_changes_in_evaluation_or_without_dropout():
    x = torch.randn(8, 8)
    layer = Dropout(0.5).eval()
    assert layer(x) is x
    assert dropout(x, 0.0) is x and torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert repr(Dropout(0.1)) == "Dropout(p=0.1)"


def test_a_model_with_dropout_in_evaluation_is_the_model_without():
    cfg = dict(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16)
    torch.manual_seed(0)
    with_dropout = GPT(ModelConfig(**cfg, dropout=0.3))
    without = GPT(ModelConfig(**cfg, dropout=0.0))
    without.load_state_dict(with_dropout.state_dict())
    ids = torch.randint(0, 20, (3, 16))
    assert torch.equal(with_dropout.eval()(ids)[0], without.eval()(ids)[0])
    with_dropout.train()
    assert not torch.equal(with_dropout(ids)[0], without(ids)[0])  # in training it drops


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_weights_dropped_keep_the_attentions_mean(dtype):
    torch.manual_seed(4)
    q, k, v = (torch.randn(1, 2, 12, 8, dtype=dtype) for _ in range(3))
    whole = explicit_causal_attention(q, k, v, 0.0).float()
    mean = torch.stack([explicit_causal_attention(q, k, v, 0.2).float() for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, whole, atol=0.06)


def test_attention_dropout_defaults_to_dropout_and_can_keep_the_weights_whole():
    same = GPT(ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.1))
    assert same.transformer.h[0].attn.dropout == 0.1  # an older folder (no attention_dropout) trains as before
    whole = GPT(ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.1,
                            attention_dropout=0.0)).train()
    block = whole.transformer.h[0]
    assert block.attn.dropout == 0.0 and block.attn.resid_dropout.p == block.mlp.dropout.p == 0.1
    # in training the attention is the same twice over (no mask on its weights), the model is not
    x = torch.randn(2, 8, 16)
    q, k, v = block.attn.heads(x)
    from repytilian.attention import causal_attention

    assert torch.equal(causal_attention(q, k, v, block.attn.dropout), causal_attention(q, k, v, block.attn.dropout))
    assert not torch.equal(whole(torch.zeros(1, 8, dtype=torch.long))[0], whole(torch.zeros(1, 8, dtype=torch.long))[0])
    with pytest.raises(ValueError, match="attention_dropout must be in"):
        ModelConfig(attention_dropout=1.0).validate()


def test_the_attention_dropout_flag_is_saved_with_the_model(corpus_file, tmp_path):
    import json

    from conftest import TINY, run_script

    r = run_script("training.py", "-d", str(corpus_file), "-m", "m", "-i", "quick", *TINY, "--dropout", "0.1",
                   "--attention-dropout", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert model["dropout"] == 0.1 and model["attention_dropout"] == 0.0
    r = run_script("training.py", "-d", str(corpus_file), "-m", "n", "-i", "quick", *TINY,
                   "--attention-dropout", "1.5", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "attention" in r.stderr, r.stderr
