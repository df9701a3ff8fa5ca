"""The models that ship in models/shakespeare/: unchanged (their manifest), small, and usable."""
import hashlib
import json
from pathlib import Path

import pytest
from conftest import run_script

from repytilian import load_model

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "models" / "shakespeare"
NAMES = ("v1c", "v2c", "v3c", "words", "bpe")
MAX_BYTES = 10 * 2**20


def manifest() -> dict[str, str]:
    return json.loads((SHIPPED / "MANIFEST.json").read_text())


def test_the_shipped_files_are_those_of_the_manifest_and_fit_in_10_mb():
    hashes = manifest()
    assert {key.split("/")[0] for key in hashes} == set(NAMES)
    on_disk = {f"{name}/{f.name}" for name in NAMES for f in (SHIPPED / name).iterdir()}
    assert on_disk == set(hashes)  # nothing missing, nothing extra (a test or demo never wrote here)
    changed = [key for key, digest in hashes.items()
               if hashlib.sha256((SHIPPED / key).read_bytes()).hexdigest() != digest]
    assert not changed, f"changed since scripts/ship_models.py wrote them: {changed}"
    assert sum((SHIPPED / key).stat().st_size for key in hashes) <= MAX_BYTES


@pytest.mark.parametrize("name", NAMES)
def test_each_shipped_model_loads_generates_and_says_how_it_was_stored(name):
    lm = load_model(SHIPPED / name)
    text = lm.generate("My lady", 40, seed=0)  # the continuation, after the prompt
    assert text.strip() and text == lm.generate("My lady", 40, seed=0)
    meta = json.loads((SHIPPED / name / "config.json").read_text())
    weights = meta["weights"]
    assert weights["dtype"] in ("float16", "bfloat16", "float32")
    assert abs(weights["val_loss_stored"] - weights["val_loss_float32"]) <= 0.002
    card = (SHIPPED / name / "README.md").read_text()
    assert f"stored in {weights['dtype']}" in card and f"scripts/ship_models.py {name}" in card
    assert (SHIPPED / name / "loss.png").stat().st_size > 0


def test_each_character_model_is_better_than_the_one_before():
    losses = [json.loads((SHIPPED / n / "config.json").read_text())["weights"]["val_loss_stored"]
              for n in ("v1c", "v2c", "v3c")]
    assert losses[0] > losses[1] > losses[2]


def test_the_seeds_generate_line_works_on_a_fresh_clone():
    r = run_script("generate.py", "-m", "models/shakespeare/v2c", "-c", "My lady", "-t", "60", cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("My lady")


def test_the_tables_of_shipped_models_give_each_folders_own_whole_split_loss():
    """The README's table said its losses were `repytilian eval`'s, whose windows overlap and which
    prints a lower loss (v2c 1.5927 against 1.6298): the loss column is each folder's whole-split
    loss as training scored it (config.json), and the words around each table must say so."""
    for page in (ROOT / "README.md", ROOT / "docs" / "model-folder.md"):
        text = page.read_text(encoding="utf-8")
        for name in NAMES:
            row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
            loss = json.loads((SHIPPED / name / "config.json").read_text())["summary"]["val_loss_full"]
            assert f"| {loss:.4f} |" in row, (page.name, name, loss)
        assert "Losses from `repytilian eval`" not in text
