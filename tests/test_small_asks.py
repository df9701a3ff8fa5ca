"""Small asks of users of nanoGPT and its peers (issue 18, item 6): --prompt-file, repytilian info."""
from pathlib import Path

from conftest import run_script

ROOT = Path(__file__).resolve().parent.parent
V2C = ROOT / "models" / "shakespeare" / "v2c"


def test_a_prompt_can_come_from_a_file(tmp_path):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("ROMEO:\nWhat light through yonder window breaks?\n", encoding="utf-8")
    r = run_script("generate.py", "-m", str(V2C), "--prompt-file", str(prompt), "-t", "30", "--seed", "1",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(prompt.read_text())
    same = run_script("generate.py", "-m", str(V2C), "-c", prompt.read_text(), "-t", "30", "--seed", "1",
                      cwd=tmp_path)
    assert same.stdout == r.stdout  # the same as typing it
    both = run_script("generate.py", "-m", str(V2C), "-c", "x", "--prompt-file", str(prompt), cwd=tmp_path)
    assert both.returncode == 2 and "not both" in both.stderr
    missing = run_script("generate.py", "-m", str(V2C), "--prompt-file", str(tmp_path / "nope.txt"), cwd=tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    binary = run_script("generate.py", "-m", str(V2C), "--prompt-file", str(tmp_path / "bin.txt"), cwd=tmp_path)
    assert binary.returncode == 2 and "not UTF-8" in binary.stderr


def test_repytilian_info_prints_the_model_card(tmp_path):
    r = run_script("info", str(V2C), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (V2C / "README.md").read_text()
    nothing = run_script("info", str(tmp_path / "no-model"), cwd=tmp_path)
    assert nothing.returncode == 2 and "Traceback" not in nothing.stderr
