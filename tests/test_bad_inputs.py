"""Every bad input we promise to handle: exit code 2, one readable message, no traceback, nothing lost.

Each row runs the command line in-process (argparse refusals included) from a scratch folder that
holds the files the rows need, and a small trained model at `model/`.
"""
import json
import pickle
import sys

import pytest
from conftest import TINY, TINY_OVERRIDES, make_corpus

from repytilian import cli
from repytilian.api import TrainOptions, train
from repytilian.data import DataSource


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "corpus.txt").write_text(make_corpus())
    (root / "empty.txt").write_bytes(b"")
    (root / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "latin1.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    (root / "binaries").mkdir()
    (root / "binaries" / "a.bin").write_bytes(b"\x00\x01\x02")
    (root / "malformed.json").write_text('{"train": [[1, 2]')
    (root / "string.json").write_text('"just a string"')
    (root / "keyed.json").write_text(json.dumps({"train": [[1, 2, 3]]}))
    (root / "empty_seqs.json").write_text("[[], []]")
    (root / "a_file").write_text("not a folder")
    (root / "book.pdf").write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\n")
    (root / "book.docx").write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00")
    verse = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n"
    (root / "notepad.txt").write_bytes(verse.encode("utf-16"))  # Windows Notepad's "Unicode": a byte-order mark
    (root / "plain16.txt").write_bytes(verse.encode("utf-16-le"))  # without one
    chars = sorted(set(verse))  # nanoGPT's char-level train.bin: uint16 ids, every high byte 0, as in UTF-16
    (root / "train.bin").write_bytes(b"".join(chars.index(c).to_bytes(2, "little") for c in verse))
    (root / "not_a_model").mkdir()
    (root / "not_a_model" / "notes.txt").write_text("mine")
    (root / "empty_dir").mkdir()
    (root / "pickled").mkdir()
    (root / "pickled" / "model.pt").write_bytes(pickle.dumps({"weights": [1, 2]}))
    train(TrainOptions(data=DataSource("file", str(root / "corpus.txt")), iterations="quick",
                       overrides=dict(TINY_OVERRIDES), out=str(root / "model"), progress=False))
    for name, damage in {
        "truncated": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:50]),
        "newer": lambda d: _edit(d, format_version=99),
        "no_tokenizer": lambda d: (d / "tokenizer.json").unlink(),
        "reshaped": lambda d: _edit(d, model={**json.loads((d / "config.json").read_text())["model"], "n_embd": 64}),
    }.items():
        copy = root / name
        copy.mkdir()
        for f in (root / "model").iterdir():
            if f.is_file():
                (copy / f.name).write_bytes(f.read_bytes())
        damage(copy)
    return root


def _edit(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


Q = ["-i", "quick", "-m", "out", *TINY]  # a quick training run, if it ever got that far
CASES = [
    # training data
    (["train", "-d", "missing.txt", *Q], "no such file: missing.txt"),
    (["train", "-d", "empty.txt", *Q], "is empty"),
    (["train", "-d", "image.bin", *Q], "looks like a binary file"),
    (["train", "-d", "book.pdf", *Q], "is a PDF document, not plain text: convert it to text first, e.g. `pdftotext"),
    # UTF-16 text was "looks like a binary file", which it is not: the fix is a conversion, named
    (["train", "-d", "notepad.txt", *Q], "is UTF-16 text, which this tool does not read: save it as UTF-8 (in "
                                         "Notepad: Save As, Encoding UTF-8; or convert it with iconv, from UTF-16 to"),
    (["train", "-d", "plain16.txt", *Q], "iconv, from UTF-16LE to UTF-8"),
    (["train", "-d", "train.bin", *Q], "train.bin looks like a binary file, not text"),
    (["train", "-d", "book.docx", *Q], "(as .docx, .odt and .epub files are), not plain text: save it as plain text"),
    (["train", "-d", "latin1.txt", *Q], "is not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8 and try again "
                                         "(text from Windows is often in cp1252"),
    (["train", "-d", "binaries", *Q], "is a folder; use -p"),
    (["train", "-p", "missing_dir", *Q], "no such folder"),
    (["train", "-p", "binaries", *Q], "holds no UTF-8 text files"),
    (["train", "-p", "corpus.txt", *Q], "is a file; use -d"),
    (["train", "-d", "corpus.txt", "-p", "binaries", *Q], "not both"),
    (["train", "-d", "corpus.txt", *Q, "--block-size", "100000"], "too short for a context of 100000"),
    # JSON data
    (["train", "-z", "json", "-d", "malformed.json", *Q], "malformed.json: invalid JSON at line 1"),
    # plain text given -z json was "invalid JSON at line 1, column 1: Expecting value"
    (["train", "-z", "json", "-d", "corpus.txt", *Q], "corpus.txt is not JSON (it starts with 'light breaks love k"),
    (["train", "-z", "json", "-d", "corpus.txt", *Q], "leave -z json out to train on it as text"),
    (["train", "-z", "json", "-d", "string.json", *Q], "expected an array"),
    (["train", "-z", "json", "-d", "keyed.json", "--json-key", "songs", *Q], "has no key 'songs'"),
    (["train", "-z", "json", "-d", "keyed.json", *Q], "name the key that holds the tokens"),
    (["train", "-z", "json", "-d", "empty_seqs.json", *Q], "no tokens to train on"),
    (["train", "-z", "json", *Q], "trains on JSON data"),
    (["train", "--json-key", "train", *Q], "need JSON data"),
    # names and values
    (["train", "-d", "corpus.txt", "-z", "bytes", *Q], "unknown tokenizer 'bytes'"),
    (["train", "-d", "corpus.txt", "-s", "giant", *Q], "unknown -s preset 'giant'"),
    (["train", "-d", "corpus.txt", "-i", "sometimes", "-m", "out"], "unknown -i preset"),
    (["train", "-d", "corpus.txt", "--set", "layers", *Q], "NAME=VALUE"),
    (["train", "-d", "corpus.txt", "--set", "wings=2", *Q], "unknown setting 'wings'"),
    (["train", "-d", "corpus.txt", "-i", "quick", "-m", "out", "--set", "n_layer=abc"], "n_layer='abc' is not a valid int"),
    (["train", "-d", "corpus.txt", "--iters", "0", *Q], "must be at least 1"),
    (["train", "-d", "corpus.txt", "--iters", "-5", *Q], "must not be negative"),
    (["train", "-d", "corpus.txt", "--batch-size", "0", *Q], "must be at least 1"),
    (["train", "-d", "corpus.txt", "--lr", "-1", *Q], "learning_rate must be > 0"),
    # was "cannot write a_file/out.txt: File exists" (above), and this one, once every token had been sampled
    (["generate", "-m", "model", "-t", "3", "-f", "/proc/samples/"], "cannot write the samples to /proc/samples"),
    # were FileExistsError / FileNotFoundError tracebacks, at the end of the export's work
    (["export", "-m", "model", "--format", "gguf", "-o", "corpus.txt/x.gguf"],
     "cannot export to corpus.txt/x.gguf: corpus.txt is a file, not a folder; export to another place"),
    (["export", "-m", "model", "--format", "hf", "-o", "corpus.txt/hf/x"], "cannot export to corpus.txt/hf/x: corpus.txt is a file"),
    (["export", "-m", "model", "--format", "onnx", "-o", "/proc/x.onnx"], "cannot export to /proc/x.onnx: nothing can be written in /proc"),
    # were: "ValueError: Invalid beta parameter at index 1: 1.5" from torch's AdamW, and a run that
    # trained until its loss was NaN
    (["train", "-d", "corpus.txt", "--set", "beta2=1.5", *Q], "beta2 must be in [0, 1), got 1.5"),
    (["train", "-d", "corpus.txt", "--set", "beta1=-0.1", *Q], "beta1 must be in [0, 1), got -0.1"),
    (["train", "-d", "corpus.txt", "--lr", "nan", *Q], "learning_rate must be a finite number, got nan"),
    (["train", "-d", "corpus.txt", "--set", "learning_rate=inf", *Q], "learning_rate must be a finite number, got inf"),
    (["train", "-d", "corpus.txt", "--set", "weight_decay=nan", *Q], "weight_decay must be a finite number, got nan"),
    (["train", "-d", "corpus.txt", "--set", "grad_clip=inf", *Q], "grad_clip must be a finite number, got inf"),
    (["train", "-d", "corpus.txt", "--dropout", "1.5", *Q], "dropout must be in [0, 1)"),
    (["train", "-d", "corpus.txt", *Q, "--n-embd", "30", "--n-head", "4"], "multiple of n_head"),
    (["train", "-d", "corpus.txt", "-z", "bpe", "--vocab-size", "10", *Q], "at least 257"),
    (["train", "-d", "corpus.txt", "--vocab-size", "300", *Q], "--vocab-size does not apply"),
    (["train", "-d", "corpus.txt", "--dtype", "float16", *Q], "float16 is for CUDA"),
    (["train", "-d", "corpus.txt", "--budget", "0", *Q], "time budget must be more than 0"),
    (["train", "-d", "corpus.txt", "--checkpoint-minutes", "0", *Q], "checkpoint_minutes must be more than 0"),
    (["train", "-d", "corpus.txt", "-t", "-1", *Q], "must not be negative"),
    # where the model goes, and continuing one
    (["train", "-d", "corpus.txt", "-i", "quick", "-m", "a_file", *TINY], "is a file, not a folder"),
    (["train", "-d", "corpus.txt", "-i", "quick", "-m", "not_a_model", *TINY], "not a Repytilian model folder"),
    # Were tracebacks (PermissionError, FileExistsError, FileNotFoundError) from the lock beside the folder.
    (["train", "-d", "corpus.txt", "-i", "quick", "-m", "/sys/kernel/x", *TINY],
     "cannot save the model to /sys/kernel/x: no permission to write in /sys/kernel"),
    (["train", "-d", "corpus.txt", "-i", "quick", "-m", "a_file/sub", *TINY],
     "cannot save the model to a_file/sub: a_file is a file, not a folder"),
    (["train", "-d", "corpus.txt", "-i", "quick", "-m", "/proc/nope", *TINY],
     "cannot save the model to /proc/nope: nothing can be written in /proc"),
    (["train", "-l", "model", "-z", "words", "-m", "model"], "trained with the 'characters' tokenizer"),
    (["train", "-l", "model", "--n-layer", "5", "-m", "model"], "cannot change the shape"),
    (["train", "-l", "model", "-d", "latin1.txt", "-m", "model"], "is not UTF-8 text"),
    (["train", "-l", "missing_model", "-m", "model"], "no model at missing_model"),
    # generation
    (["generate", "-m", "model", "-t", "-1"], "must not be negative"),
    (["generate", "-m", "model", "-t", "5000000000"], "between 0 and 1,000,000"),
    (["generate", "-m", "model", "--temperature", "-1"], "--temperature must be 0"),
    (["generate", "-m", "model", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["generate", "-m", "model", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["generate", "-m", "model", "--top-k", "-1"], "--top-k must be 0 (off: every token) or more"),
    (["generate", "-m", "model", "--num-samples", "0"], "--num-samples must be between 1"),
    (["generate", "-m", "model", "--max-time", "0"], "--max-time must be more than 0"),
    (["generate", "-m", "model", "-c", "QZX"], "unknown characters"),
    (["generate", "-m", "model", "-f", "a_file/out.txt"],  # its folder is a file
     "cannot write the samples to a_file/out.txt: a_file is a file, not a folder; give -f another place"),
    # model folders
    (["generate", "-m", "missing_model"], "no model at missing_model"),
    (["generate", "-m", "empty_dir"], "not a Repytilian model folder"),
    (["generate", "-m", "a_file"], "is a file"),
    (["generate", "-m", "pickled"], "pickled files"),
    (["generate", "-m", "truncated"], "damaged or truncated"),
    (["generate", "-m", "newer"], "newer than this Repytilian"),
    (["generate", "-m", "no_tokenizer"], "missing tokenizer.json"),
    (["generate", "-m", "reshaped"], "does not match its config.json"),
    (["eval", "-m", "model", "-d", "latin1.txt"], "is not UTF-8 text"),
    (["eval", "-m", "model", "-d", "README_missing.md"], "no such file"),
    (["plot", "not_a_model"], "not a Repytilian model folder"),
    # serving
    (["serve", "--models", ".", "--lanes", "0"], "--lanes must be at least 1"),
    (["serve", "--models", ".", "--max-batch", "0"], "--max-batch must be at least 1"),
]


def test_the_table_is_at_least_forty_rows():
    assert len(CASES) >= 40


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input(scratch, monkeypatch, capsys, argv, message):
    if argv[:2] == ["train", "--device"] and "cuda" in argv:
        pytest.skip("only meaningful without a GPU")
    monkeypatch.chdir(scratch)
    before = {p.name for p in scratch.iterdir()}
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err, err
    assert "Traceback" not in err
    assert {p.name for p in scratch.iterdir()} == before  # nothing written, nothing lost
    assert json.loads((scratch / "model" / "config.json").read_text())["summary"]["step"] == 50


@pytest.mark.parametrize("device", ["xla", "meta", "xpu", "vulkan", "hpu", "privateuseone", "tpu"])
def test_a_device_this_tool_does_not_run_on_is_named_not_a_traceback(scratch, monkeypatch, capsys, device):
    """torch.device() takes these names, and the run failed deep inside torch: "RuntimeError: PyTorch
    is not linked with support for xla devices", "Tensor.item() cannot be called on meta tensors"."""
    monkeypatch.chdir(scratch)
    assert cli.main(["train", "-d", "corpus.txt", "--device", device, *Q]) == 2
    err = capsys.readouterr().err
    assert f"--device {device}" in err and "use auto, cpu, cuda, cuda:N or mps" in err, err
    assert "Traceback" not in err
    assert cli.main(["generate", "-m", "model", "--device", device, "-t", "3"]) == 2
    assert "use auto, cpu, cuda, cuda:N or mps" in capsys.readouterr().err


def test_a_gpu_by_its_common_name_is_told_its_torch_name(scratch, monkeypatch, capsys):
    monkeypatch.chdir(scratch)
    assert cli.main(["generate", "-m", "model", "--device", "GPU", "-t", "3"]) == 2
    assert "--device gpu is not a device this tool runs on (an NVIDIA GPU is cuda, a Mac's is mps)" in \
        capsys.readouterr().err
    assert cli.main(["generate", "-m", "model", "--device", "metal", "-t", "3"]) == 2
    assert "(a Mac's GPU is mps)" in capsys.readouterr().err


def test_a_device_name_in_capitals_is_taken(scratch, monkeypatch, capsys):
    monkeypatch.chdir(scratch)
    assert cli.main(["generate", "-m", "model", "--device", "CPU", "-t", "3"]) == 0


def test_unknown_device_without_a_gpu(scratch, monkeypatch, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(scratch)
    assert cli.main(["train", "-d", "corpus.txt", "--device", "cuda", *Q]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err
    assert cli.main(["train", "-d", "corpus.txt", "--device", "cuda:1", *Q]) == 2
    assert "--device cuda:1 was asked for" in capsys.readouterr().err  # it said cuda

    sys.stderr.flush()


def test_more_serve_lanes_than_cores_are_taken_with_a_warning(capsys):
    """`serve --lanes 100` on 2 cores made a hundred batch threads without a word."""
    import argparse

    from repytilian.cli.serve import _check_limits
    from repytilian.runtime.cpu import physical_cores

    cores = physical_cores() or __import__("os").cpu_count()
    limits = dict(max_tokens=16, max_concurrent=16, max_queue=32, max_loaded=4, max_batch=32, max_seconds=60.0)
    _check_limits(argparse.Namespace(lanes=cores, **limits))
    assert capsys.readouterr().err == ""
    _check_limits(argparse.Namespace(lanes=cores + 98, **limits))
    assert f"warning: --lanes {cores + 98} on {cores} core" in capsys.readouterr().err
