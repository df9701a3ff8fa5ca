"""Repytilian: train GPT-style language models from scratch on your own text, and generate from them.

    import repytilian
    lm = repytilian.load_model("models/shakespeare/basic")
    text = lm.generate("ROMEO:", max_new_tokens=200)
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import RepytilianError  # noqa: E402


def __getattr__(name: str):
    # torch is imported lazily so that `repytilian --help` and error paths stay fast.
    if name in ("load_model", "train", "TrainOptions", "LanguageModel"):
        from . import api

        return getattr(api, name)
    if name == "on_screen":
        from .cli.progress import on_screen

        return on_screen
    raise AttributeError(name)


__all__ = ["RepytilianError", "load_model", "train", "TrainOptions", "LanguageModel", "on_screen", "__version__"]
