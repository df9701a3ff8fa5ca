"""Commands that error messages suggest: each is run as given and does what the user meant."""
import shutil
import sys
import types
from pathlib import Path

import pytest
from conftest import TINY, run_script
from test_interop import LegacyModel, legacy_module, run_advice

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--iters", "4", "-t", "0", *TINY]


def advice_of(stderr: str) -> str:
    line = next(x for x in stderr.splitlines() if x.startswith("error: no model at"))
    return line.split("; ", 1)[1]


def test_a_missing_model_of_your_own_says_how_to_train_it_there(tmp_path, corpus_file):
    r = run_script("generate.py", "-m", "models/mine", cwd=tmp_path)
    assert r.returncode == 2
    advice = advice_of(r.stderr)
    command = advice.split(": ", 1)[1].split(" (")[0].replace("YOUR_TEXT.txt", str(corpus_file))
    assert "-m models/mine" in command and "-d " in command  # not Tiny Shakespeare into a folder of that name
    done = run_advice(command + " " + " ".join(QUICK), tmp_path)
    assert done.returncode == 0, done.stderr
    assert run_script("generate.py", "-m", "models/mine", "-t", "5", cwd=tmp_path).returncode == 0


def test_a_missing_default_model_says_to_train_the_default(tmp_path):
    r = run_script("generate.py", cwd=tmp_path)
    advice, shipped = advice_of(r.stderr).split("; or use a model that ships with Repytilian: ")
    assert advice.endswith(": python3 training.py")
    # was only the training command: a new user can generate from a shipped model at once instead
    sampled = run_script("generate.py", *shipped.split(), "-t", "5", cwd=tmp_path)
    assert shipped.startswith("-m ") and sampled.returncode == 0 and sampled.stdout.strip(), sampled.stderr
    done = run_advice("python3 training.py " + " ".join(QUICK), tmp_path)  # the default, cut short
    assert done.returncode == 0, done.stderr
    assert run_script("generate.py", "-t", "5", cwd=tmp_path).returncode == 0


def test_a_typo_in_a_model_name_suggests_the_folder_meant(tmp_path):
    shutil.copytree(ROOT / "models" / "shakespeare" / "v2c", tmp_path / "models" / "shakespeare" / "v2c")
    r = run_script("generate.py", "-m", "models/shakespeare/v2", cwd=tmp_path)
    assert advice_of(r.stderr) == "did you mean models/shakespeare/v2c?"
    # the server's name of a model, which the README's tables use too, was "train one there"
    r = run_script("generate.py", "-m", "shakespeare/v2c", cwd=tmp_path)
    assert advice_of(r.stderr) == "did you mean models/shakespeare/v2c?"
    # its folder was "not a Repytilian model folder (no config.json)"
    r = run_script("generate.py", "-m", "models/shakespeare", cwd=tmp_path)
    assert r.returncode == 2 and ("error: models/shakespeare is a folder of models (v2c), not a model: give one of "
                                  "them, such as models/shakespeare/v2c") in r.stderr
    meant = run_script("generate.py", "-m", "models/shakespeare/v2c", "-t", "5", cwd=tmp_path)
    assert meant.returncode == 0 and meant.stdout.strip()


def test_a_model_only_the_original_shipped_says_how_to_convert_its_folder(tmp_path, monkeypatch):
    r = run_script("generate.py", "-m", "models/starwars/v1w", cwd=tmp_path)
    advice = advice_of(r.stderr)
    assert "Repytilian does not" in advice and "training.py" not in advice
    monkeypatch.setitem(sys.modules, "src", types.ModuleType("src"))
    monkeypatch.setitem(sys.modules, "src.llm_bigram", legacy_module)
    tokens = sorted(set("Luke runs to the ship . Han waits".split()))
    LegacyModel(len(tokens)).export(tmp_path / "original" / "v1w", tokens)
    (tmp_path / "original" / "v1w" / "tokens.type").write_text("words")
    command = advice.split("convert it: ")[1].replace("ORIGINAL_FOLDER", "original/v1w")
    done = run_advice(command, tmp_path)
    assert done.returncode == 0, done.stderr
    out = run_script("generate.py", "-m", "models/starwars/v1w", "-c", "Luke", "-t", "4", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.split()[0] == "Luke", out.stderr


@pytest.mark.parametrize("what", ["legacy", "nanogpt"])
def test_a_refused_pickle_is_explained_without_torchs_advice(tmp_path, what):
    import torch

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    if what == "legacy":
        folder = tmp_path / "old"
        folder.mkdir()
        for name in ("token_embedding_table", "position_embedding_table", "blocks", "ln_f", "lm_head"):
            torch.save({"x": Payload()}, folder / f"{name}.pt")
        (folder / "tokens.json").write_text('["a", "b"]')
        r = run_script("import-legacy", "old", "new", cwd=tmp_path)
    else:
        torch.save({"model": Payload()}, tmp_path / "ckpt.pt")
        (tmp_path / "t.txt").write_text("ab")
        r = run_script("import", "--from", "nanogpt", "ckpt.pt", "new", "--data", "t.txt", cwd=tmp_path)
    assert r.returncode == 2 and "ran" not in r.stdout
    assert "cannot be read safely" in r.stderr and "it asks for" in r.stderr and "print" in r.stderr, r.stderr
    assert "weights_only" not in r.stderr and "succeed" not in r.stderr and "Traceback" not in r.stderr


def test_commands_printed_for_a_folder_with_a_space_paste_as_one_word(tmp_path, corpus_file):
    """`-m "models/my model"` printed "generate with: python3 generate.py -m models/my model": pasted,
    two words, and "no model at models/my"."""
    r = run_script("training.py", "-d", str(corpus_file), "-m", "models/my model", *QUICK, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    command = r.stderr.split("generate with: ", 1)[1].splitlines()[0]
    assert command == "python3 generate.py -m 'models/my model'"
    done = run_advice(command + " -t 5", tmp_path)
    assert done.returncode == 0 and done.stdout.strip(), done.stderr


def test_the_library_names_a_shipped_model_where_the_default_one_is_missing(tmp_path, monkeypatch):
    """load_model() before any training said only "train it first": a Python user could load a shipped one."""
    from repytilian.api import load_model
    from repytilian.store.missing import MissingModel

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingModel, match="or load a shipped one, such as") as missing:
        load_model()
    shipped = str(missing.value).rsplit("such as ", 1)[1]
    assert load_model(shipped).generate("ROMEO:", 5, seed=1)
