"""When there is no model where one was asked for: why, and what would put one there (for each
caller to word: the command line as the command that does it)."""
from __future__ import annotations

import difflib
from pathlib import Path

from ..config import DEFAULT_MODEL_DIR
from ..errors import RepytilianError


def explain_missing(path: Path) -> RepytilianError:
    leftovers = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
    if leftovers:
        return RepytilianError(
            f"no model at {path}, but a save into it was interrupted; the previous model is in "
            f"{leftovers[-1]}: rename that folder to {path} to use it"
        )
    return _missing(path)


# The original Repytilian's models that its README names and Repytilian does not ship.
ORIGINAL_ONLY = ("models/starwars/v0c", "models/starwars/v1w", "models/steev/v2w")
# A shipped model beside the package (a checkout, or an editable install): what someone without a
# model of their own can generate from at once
SHIPPED_EXAMPLE = Path(__file__).resolve().parents[2] / "models" / "shakespeare" / "v3c"


def shipped_example() -> Path | None:
    return SHIPPED_EXAMPLE if SHIPPED_EXAMPLE.is_dir() else None


class MissingModel(RepytilianError):
    """No model at `path`. `advice` says what would put one there, for each caller to word: "typo"
    (`meant` is the folder the user probably meant), "default" (train the default model),
    "original" (a model only the original Repytilian shipped: convert its folder), "own" (train
    one there on your own text)."""

    def __init__(self, path: Path, advice: str, meant: Path | None = None):
        self.path, self.advice, self.meant = path, advice, meant
        shipped = shipped_example()
        words = {
            "typo": f"did you mean {meant}?",
            "default": "train it first (Tiny Shakespeare, the default)" + (
                f", or load a shipped one, such as {shipped}" if shipped else ""),
            "original": (f"the original Repytilian shipped {path.as_posix()}, Repytilian does not (it ships "
                         "models/shakespeare/v1c, v2c, v3c, words and bpe). With that folder from the original "
                         "project, convert it (interop.convert.import_model, format legacy)"),
            "own": "train one there on your own text",
        }
        super().__init__(f"no model at {path}; {words[advice]}")


class LegacyFolder(RepytilianError):
    """A model folder of the original Repytilian (pickles): converted, never loaded as it is."""

    def __init__(self, path: Path):
        self.path, self.converted = path, converted_name(path)
        super().__init__(f"{path} is a model folder of the original Repytilian, saved as pickles, which can run code "
                         "when loaded, so it is not loaded as it is. Convert it (safely) into a model folder, e.g. "
                         f"{self.converted}")


def _missing(path: Path) -> MissingModel:
    """What would put a model at `path`: advice that does what the user meant (training Tiny
    Shakespeare into models/starwars would not)."""
    nearby = model_folders_in(path.parent)
    close = difflib.get_close_matches(path.name, [p.name for p in nearby], n=1, cutoff=0.75)
    if close:
        return MissingModel(path, "typo", path.parent / close[0])
    # "shakespeare/v3c", as the server and the README's tables name the shipped models
    for root in (Path("models"), SHIPPED_EXAMPLE.parents[1]):
        if not path.is_absolute() and (root / path / "config.json").is_file():
            return MissingModel(path, "typo", root / path)
    if path.absolute() == Path(DEFAULT_MODEL_DIR).absolute():
        return MissingModel(path, "default")
    if any(path.as_posix().endswith(name) for name in ORIGINAL_ONLY):
        return MissingModel(path, "original")
    return MissingModel(path, "own")


def converted_name(path: Path) -> Path:
    return path.with_name(path.name + "-converted")


def model_folders_in(folder: Path) -> list[Path]:
    """The model folders directly under `folder`, sorted (none where it cannot be read)."""
    try:
        return sorted(p for p in folder.iterdir() if (p / "config.json").is_file())
    except OSError:
        return []
