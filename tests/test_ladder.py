"""The learning path: the lecture's steps as architectures, and `repytilian ladder` comparing them."""
import json

import pytest
import torch
from conftest import run_script

from repytilian.config import ARCHS, LECTURE_STEP_ABOUT, ModelConfig
from repytilian.errors import RepytilianError
from repytilian.model import GPT


def step_model(step: str, **shape) -> GPT:
    torch.manual_seed(0)
    base = dict(vocab_size=11, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return GPT(ModelConfig(**{**base, **ARCHS[step], **shape})).eval()


def test_the_bigram_model_is_a_table_read_by_the_current_token_alone():
    model = step_model("bigram")
    assert len(model.transformer.h) == 0 and "wpe" not in model.transformer
    assert model.lm_head.weight is not model.transformer.wte.weight  # untied: any table
    a = torch.tensor([[1, 2, 3, 4, 5]])
    b = torch.tensor([[7, 0, 9, 6, 5]])  # same last token, different past
    assert torch.equal(model(a)[0][0, -1], model(b)[0][0, -1])
    table = model.lm_head(model.transformer.wte.weight)  # (vocab, vocab): row i scores what follows token i
    assert torch.allclose(model(a)[0][0], table[a[0]])


def test_each_step_adds_what_the_lecture_adds():
    one, multi, ff, blocks = (step_model(s) for s in ("one-head", "multi-head", "feed-forward", "blocks"))
    assert one.config.n_head == 1 and multi.config.n_head == 4 and not one.config.residual
    assert one.transformer.h[0].mlp is None and ff.transformer.h[0].mlp is not None
    assert isinstance(ff.transformer.h[0].ln_1, torch.nn.Identity)
    assert blocks.config.residual and isinstance(blocks.transformer.h[0].ln_1, torch.nn.LayerNorm)
    # past tokens matter from the first attention step on
    a, b = torch.tensor([[1, 2, 3, 4, 5]]), torch.tensor([[7, 0, 9, 6, 5]])
    assert not torch.allclose(one(a)[0][0, -1], one(b)[0][0, -1])
    assert list(LECTURE_STEP_ABOUT) == ["bigram", "one-head", "multi-head", "feed-forward", "blocks", "classic"]


def test_a_step_of_the_ladder_is_refused_by_the_hugging_face_export_with_a_reason(tmp_path):
    from repytilian.interop.hf import export_hf
    from repytilian.tokenizers import CharacterTokenizer

    with pytest.raises(RepytilianError, match="lecture's steps"):
        export_hf(step_model("bigram"), CharacterTokenizer(list("abcdefghijk")), tmp_path / "hf")


def test_repytilian_ladder_trains_each_step_and_prints_one_table(corpus_file, tmp_path):
    r = run_script("ladder", "-d", str(corpus_file), "--budget", "1", "--steps", "bigram,one-head,classic",
                   "--seed", "3", "--out", str(tmp_path / "ladder"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "ladder" / "ladder.json").read_text())["rows"]
    assert [row["step"] for row in rows] == ["bigram", "one-head", "classic"]
    assert all(row["val_loss"] > 0 and row["sample"] for row in rows)
    assert rows[0]["parameters"] < rows[1]["parameters"] < rows[2]["parameters"]
    for row in rows:
        assert f"{row['step']:<13}" in r.stdout and f"{row['val_loss']:.4f} {row['bits_per_byte']:>9.4f}" in r.stdout
    assert (tmp_path / "ladder" / "bigram" / "model.safetensors").is_file()  # each step can be sampled later
    bad = run_script("ladder", "-d", str(corpus_file), "--steps", "bigram,trigram", cwd=tmp_path)
    assert bad.returncode == 2 and "--steps has unknown step(s) trigram" in bad.stderr


def test_a_text_too_short_for_the_context_is_told_in_the_ladders_flags(tmp_path):
    """Said "a smaller context (--block-size 14)", a flag the ladder does not take; `--steps Bigram`
    was an unknown step."""
    (tmp_path / "little.txt").write_text("the king and queen walk to the castle. " * 7)
    r = run_script("ladder", "-d", "little.txt", "--budget", "1", "--steps", "Bigram", "--out", "l", cwd=tmp_path)
    assert r.returncode == 2 and "Use more data, or -s auto, whose context fits the text" in r.stderr, r.stderr
    assert "--block-size" not in r.stderr
    fitted = run_script("ladder", "-d", "little.txt", "--budget", "1", "--steps", "Bigram", "-s", "auto",
                        "--out", "l", cwd=tmp_path)
    assert fitted.returncode == 0, fitted.stderr


def test_ctrl_c_stops_the_climb(tmp_path, corpus_file):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import checkout_path

    proc = subprocess.Popen([sys.executable, "-m", "repytilian", "ladder", "-d", str(corpus_file), "--budget", "60",
                             "--steps", "bigram,one-head", "--out", "lad", "-s", "tiny"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": checkout_path()})
    first = proc.stderr.readline()
    assert first.startswith("[1/2] bigram"), first
    time.sleep(4)  # into its 60 s of training
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    assert "[2/2]" not in stderr, stderr  # was: the next step started, Ctrl+C stopped one step only
    assert "stopped by SIGINT" in stderr and not (tmp_path / "lad" / "ladder.json").exists()


def test_a_climb_stopped_after_some_steps_compares_them(tmp_path, monkeypatch, capsys):
    from repytilian.cli import ladder

    row = {"step": "bigram", "adds": "", "parameters": 10, "steps_trained": 5, "val_loss": 2.5,
           "bits_per_byte": None, "sample": "abc"}
    monkeypatch.setattr(ladder, "climb", lambda args: ([row], "SIGINT"))
    parser = __import__("argparse").ArgumentParser()
    ladder.add_arguments(parser)
    assert ladder.ladder_command(parser.parse_args(["--out", str(tmp_path / "lad"), "--budget", "5"])) == 130
    assert "bigram" in capsys.readouterr().out
    assert json.loads((tmp_path / "lad" / "ladder.json").read_text())["rows"] == [row]
