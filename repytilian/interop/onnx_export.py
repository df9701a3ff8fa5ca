"""`repytilian export --format onnx`: the model as one ONNX graph (ids in, logits out), for
onnxruntime and the tools built on it. torch.onnx's exporter (torch.export underneath, which needs
the `onnx` and `onnxscript` packages: `pip install 'repytilian[onnx]'`) writes it with the batch
and the number of tokens left free, up to the model's context. The tokenizer is not part of the
graph: the model folder's tokenizer.json encodes and decodes for it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from ..errors import RepytilianError
from ..model import GPT
from ..runtime.fileio import atomic_output


class _Logits(torch.nn.Module):
    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)[0]


@contextlib.contextmanager
def _exporter_quiet():
    """The exporter's warnings are for torch's developers (torchvision's operators skipped where it is not
    installed, deprecations inside torch): a user exporting a model sees the result, or the error."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(model: GPT, out: str | Path) -> Path:
    out = Path(out)
    if out.exists():
        raise RepytilianError(f"{out} already exists; export into a new file")
    for name in ("onnx", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            raise RepytilianError(f"exporting to ONNX needs the '{name}' package: pip install 'repytilian[onnx]'") from None
    model = model.eval()
    block = model.config.block_size
    example = torch.zeros(1, min(8, block), dtype=torch.long)
    dims = {"input_ids": {0: torch.export.Dim("batch", min=1, max=4096),
                          1: torch.export.Dim("tokens", min=1, max=block)}}
    said = io.StringIO()
    try:
        with atomic_output(out) as tmp, contextlib.redirect_stdout(said), _exporter_quiet():  # it narrates each pass
            torch.onnx.export(_Logits(model).eval(), (example,), str(tmp), dynamo=True, input_names=["input_ids"],
                              output_names=["logits"], dynamic_shapes=dims, external_data=False)
    except Exception as e:
        if isinstance(e, RepytilianError):
            raise
        raise RepytilianError(f"torch.onnx could not export this model ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:300] if str(e) else ''})") from None
    return out
