"""Models in and out of other formats, as library verbs: `import_model` makes a model folder of a
Hugging Face folder, a nanoGPT checkpoint or an original-Repytilian folder; `export_model` writes
a model in Hugging Face, GGUF or ONNX form. Each returns where it wrote; the words are the caller's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import RepytilianError, SettingError

IMPORT_FORMATS = ("hf", "nanogpt", "legacy")
EXPORT_FORMATS = ("hf", "gguf", "onnx")


def import_model(source_format: str, source: str | Path, out: str | Path, data: str | Path | None = None):
    """Convert `source` into the model folder `out`; returns the saved `LanguageModel`. `data` is
    the text a nanoGPT character model was trained on (its characters are the vocabulary)."""
    if source_format == "hf":
        from .hf_import import import_hf

        if data:
            raise SettingError("data", "is for nanoGPT checkpoints; a Hugging Face folder brings its own tokenizer")
        model, tokenizer, origin = import_hf(source)
        meta: dict[str, Any] = {"imported_from": origin}
    elif source_format == "nanogpt":
        from .nanogpt import convert

        if not data:
            raise SettingError("data", "is required with the nanogpt format: the text the model was trained on "
                                       "(its characters are the vocabulary)")
        model, tokenizer, info = convert(source, data)
        meta = {"imported_from": {"format": "nanogpt", "path": str(source), **info},
                "data": {"source": {"kind": "file", "value": str(Path(data).resolve())}}}
    elif source_format == "legacy":
        from .legacy import convert as convert_legacy

        model, tokenizer, info = convert_legacy(source)
        meta = {"imported_from": {"format": "repytilian-legacy", "path": str(source), **info}}
    else:
        raise SettingError("source_format", f"is one of {', '.join(IMPORT_FORMATS)}, not {source_format!r}")
    return save_converted(out, model, tokenizer, meta)


def save_converted(out: str | Path, model, tokenizer, meta: dict[str, Any]):
    """A converted model saved as a model folder (with a sample on its card); its `LanguageModel`."""
    from ..language_model import LanguageModel
    from ..store.folder import save_model_dir
    from ..store.lock import TargetLock

    target = Path(out)
    lm = LanguageModel(model, tokenizer, meta, target)
    try:
        sample = lm.generate("", 200, seed=0)
    except RepytilianError:
        sample = None
    with TargetLock(target):
        save_model_dir(target, model, tokenizer, meta, card=True, sample=sample)
    return lm


def export_model(lm, format: str, out: str | Path, name: str | None = None) -> Path:
    """Write `lm` (a LanguageModel) as `format` to `out`: a folder (hf) or one file (gguf, onnx)."""
    from ..store.lock import check_writable

    check_writable(Path(out), "export to", "export to another place")  # (not after minutes of ONNX tracing)
    if format == "onnx":
        from .onnx_export import export_onnx

        return export_onnx(lm.model, out)
    if format == "gguf":
        from .gguf_export import export_gguf

        return export_gguf(lm.model, lm.tokenizer, out, name=name or "repytilian")
    if format == "hf":
        from .hf import export_hf

        return export_hf(lm.model, lm.tokenizer, out)
    raise SettingError("format", f"is one of {', '.join(EXPORT_FORMATS)}, not {format!r}")
