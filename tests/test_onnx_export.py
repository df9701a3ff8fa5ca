"""repytilian export --format onnx: the graph in onnxruntime gives our logits, for any batch and length."""
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script

from repytilian.errors import RepytilianError
from repytilian.interop.onnx_export import export_onnx
from repytilian.store.folder import load_model_dir

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
V2C = Path(__file__).resolve().parent.parent / "models" / "shakespeare" / "v2c"


@pytest.mark.slow
def test_onnxruntime_gives_the_same_logits(tmp_path):
    r = run_script("export", "-m", str(V2C), "--format", "onnx", "v2c.onnx", cwd=tmp_path, process=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and "onnxruntime.InferenceSession" in r.stderr
    assert "torchvision" not in r.stderr and "Warning" not in r.stderr, r.stderr  # torch's own notes were shown
    model = load_model_dir(V2C).model.eval()
    session = ort.InferenceSession(str(tmp_path / "v2c.onnx"))
    for shape in ((1, 1), (3, 17), (2, model.config.block_size)):
        ids = torch.randint(model.config.vocab_size, shape)
        with torch.no_grad():
            ours = model(ids)[0].numpy()
        theirs = session.run(None, {"input_ids": ids.numpy()})[0]
        assert theirs.shape == ours.shape and np.abs(theirs - ours).max() < 1e-4
    with pytest.raises(RepytilianError, match="already exists"):
        export_onnx(model, tmp_path / "v2c.onnx")


@pytest.mark.slow
def test_value_embeddings_which_no_other_format_holds_go_to_onnx(tmp_path):
    """The refusal of the other formats sends a model with value embeddings here: it must work."""
    from repytilian.config import ARCHS, ModelConfig
    from repytilian.model import GPT

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=16, **ARCHS["modern"],
                            qk_norm=True, value_embeddings=True)).eval()
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx")))
    ids = torch.randint(20, (2, 9))
    with torch.no_grad():
        ours = model(ids)[0].numpy()
    assert np.abs(session.run(None, {"input_ids": ids.numpy()})[0] - ours).max() < 1e-4
