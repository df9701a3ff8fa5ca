import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from repytilian.errors import RepytilianError
from repytilian.model import GPT, ModelConfig
from repytilian.store.folder import FORMAT_VERSION, load_model_dir, save_model_dir
from repytilian.tokenizers import CharacterTokenizer


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    tok = CharacterTokenizer.train("hello world\n")
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=16))
    path = save_model_dir(tmp_path / "m", model, tok, {"note": "test"})
    return path, model, tok


def test_save_and_load_give_identical_logits(saved):
    path, model, tok = saved
    loaded = load_model_dir(path)
    idx = torch.tensor([tok.encode("hello wor")])
    model.eval()
    assert torch.equal(model(idx)[0], loaded.model(idx)[0])
    assert loaded.tokenizer.encode("hello") == tok.encode("hello")
    assert loaded.meta["note"] == "test"
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_saving_again_replaces_the_model_and_keeps_user_files(saved, tmp_path):
    path, model, tok = saved
    (path / "notes.txt").write_text("mine")
    with torch.no_grad():
        model.transformer.wpe.weight.add_(1.0)
    save_model_dir(path, model, tok, {})
    assert (path / "notes.txt").read_text() == "mine"
    assert torch.equal(load_model_dir(path).model.transformer.wpe.weight, model.transformer.wpe.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging or old copies left behind


def test_refuses_to_write_into_a_folder_that_is_not_a_model(saved, tmp_path):
    _, model, tok = saved
    other = tmp_path / "models"
    (other / "precious").mkdir(parents=True)
    with pytest.raises(RepytilianError, match="not a Repytilian model folder"):
        save_model_dir(other, model, tok, {})
    assert (other / "precious").is_dir()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RepytilianError, match="is a file"):
        save_model_dir(tmp_path / "afile", model, tok, {})


def test_a_crash_during_the_save_leaves_the_previous_model(saved, monkeypatch):
    path, model, tok = saved
    before = (path / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("repytilian.store.folder.save_file", crash)
    with pytest.raises(RepytilianError, match="No space left on device; the model that was there is intact"):
        save_model_dir(path, model, tok, {})
    assert (path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["m"]


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "model.safetensors").unlink(), "missing model.safetensors"),
    (lambda p: (p / "tokenizer.json").unlink(), "missing tokenizer.json"),
    (lambda p: (p / "config.json").write_text("{broken"), "not valid JSON"),
    (lambda p: (p / "model.safetensors").write_bytes((p / "model.safetensors").read_bytes()[:100]),
     "damaged or truncated"),
    (lambda p: _edit_config(p, format_version=FORMAT_VERSION + 1), "newer than this Repytilian"),
    (lambda p: _edit_config(p, format="something-else"), "not a Repytilian model config"),
    (lambda p: _edit_config(p, model={"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "vocab_size": 9}),
     "does not match its config.json"),
    (lambda p: _edit_config(p, model={"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "vocab_size": 50}),
     "tokenizer.json has 9 tokens"),
    (lambda p: _edit_config(p, model={"n_layer": "many"}), "invalid model config"),
    # these were Python's own words from deep inside ("'<' not supported between instances of 'str' and 'int'")
    (lambda p: _edit_config(p, model={"n_layer": "4"}), r"invalid model config \(n_layer must be a whole number, got \"4\"\)"),
    (lambda p: _edit_config(p, model={"bias": 1}), "bias must be true or false, got 1"),
    (lambda p: _edit_config(p, model={"dropout": "0.1"}), r"dropout must be a number, got \"0.1\""),
    (lambda p: _edit_config(p, model={"attention_dropout": "0"}), r"attention_dropout must be a number, got \"0\""),
    (lambda p: _edit_config(p, model=[1, 2]), "its model section is not a JSON object"),
])
def test_damaged_model_folders_are_clear_errors(saved, damage, message):
    path, _, _ = saved
    damage(path)
    with pytest.raises(RepytilianError, match=message):
        load_model_dir(path)


def test_extra_or_renamed_weights_are_rejected(saved):
    path, _, _ = saved
    weights = load_file(path / "model.safetensors")
    weights["evil"] = torch.zeros(1)
    save_file(weights, path / "model.safetensors")
    with pytest.raises(RepytilianError, match="unexpected: evil"):
        load_model_dir(path)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(RepytilianError, match="no model at .*train one there on your own text"):
        load_model_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepytilianError, match="not a Repytilian model folder"):
        load_model_dir(tmp_path / "empty")
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "model.pt").write_bytes(b"not loaded")
    with pytest.raises(RepytilianError, match="pickled files"):
        load_model_dir(tmp_path / "legacy")


def test_a_config_bigger_than_its_weights_is_refused_before_anything_is_built(tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    from conftest import ROOT

    folder = tmp_path / "m"
    shutil.copytree(ROOT / "models" / "shakespeare" / "v1c", folder)
    config = json.loads((folder / "config.json").read_text())
    config["model"]["n_embd"] = 1 << 20  # a damaged config: terabytes of weights
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RepytilianError, match="more than model.safetensors"):
        load_model_dir(folder)
    # and loading a model folder no longer imports torch's compiler (2.5 s of every start-up)
    probe = ("import sys; from repytilian.store.folder import load_model_dir; "
             f"load_model_dir({str(ROOT / 'models' / 'shakespeare' / 'v2c')!r}); print('torch._dynamo' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.stdout.strip() == "False", r.stderr
