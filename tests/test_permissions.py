"""What Repytilian saves can be read by others as the umask allows, like any file a program writes.

Temporary files and folders are private (mkstemp 0600, mkdtemp 0700, safetensors writes 0600) and a
rename keeps that mode: before the fix every trained model's weights were 0600.
"""
import os
import stat
from pathlib import Path

import pytest
from conftest import run_script


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(root: Path) -> dict[str, str]:
    found = {root.name: oct(stat.S_IMODE(root.stat().st_mode))}
    if root.is_dir():
        for p in root.rglob("*"):
            found[str(p.relative_to(root.parent))] = oct(stat.S_IMODE(p.stat().st_mode))
    return found


def assert_shared(root: Path) -> None:
    for name, mode in modes(root).items():
        want = "0o755" if (root.parent / name).is_dir() or name == root.name and root.is_dir() else "0o644"
        assert mode == want, f"{name} is {mode}, expected {want}"


def test_saved_models_and_every_export_follow_the_umask(tmp_path, umask_022):
    (tmp_path / "c.txt").write_text("the king and the queen walk to the castle.\n" * 60)
    r = run_script("training.py", "-d", "c.txt", "-z", "bpe", "--vocab-size", "280", "-m", "m", "--iters", "12",
                   "-t", "0", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
                   "--set", "eval_interval=6", "--set", "eval_iters=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "trainer_state" / "tensors.safetensors").is_file()
    assert_shared(tmp_path / "m")
    for fmt, out in (("hf", "m-hf"), ("gguf", "m.gguf"), ("onnx", "m.onnx")):
        if fmt == "gguf":
            pytest.importorskip("gguf")
        if fmt == "onnx":
            pytest.importorskip("onnxscript")
        r = run_script("export", "-m", "m", "--format", fmt, out, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert_shared(tmp_path / out)
    r = run_script("import", "--from", "hf", "m-hf", "back", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert_shared(tmp_path / "back")


def test_a_stricter_umask_is_respected(tmp_path):
    from repytilian.runtime.fileio import atomic_write_bytes

    old = os.umask(0o077)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o600
