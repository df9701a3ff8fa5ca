"""repytilian chat and generate.py --interactive: a prompt loop on the shipped v3c, as a real process."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import run_script

ROOT = Path(__file__).resolve().parent.parent
V3C = ROOT / "models" / "shakespeare" / "v3c"


def env() -> dict:
    """The commands' environment, read when a test runs: with that test's own cache folder (conftest)."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_a_conversation_with_commands():
    lines = "Good morrow, sweet lady\n/temp 0\nWhat news?\n/topk 0\n/topk x\n/temp -1\n/reset\n/help\nAnd thou?\n/quit\n"
    r = subprocess.run([sys.executable, "-m", "repytilian", "chat", "-m", str(V3C), "--seed", "1", "-t", "60"],
                       input=lines, capture_output=True, text=True, env=env(), timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("model> ") == 3 and "(temperature 0)" in out and "(top-k off)" in out
    assert "(/topk needs a whole number, 0 or more: /topk 40)" in out and "(/temp needs a number, 0 or more" in out and "(the conversation is forgotten)" in out and "/reset (forget" in out
    answers = [part.split("\nyou> ")[0] for part in out.split("model> ")[1:]]
    assert all(a.strip() and "\n\n" not in a for a in answers)  # each answer ends at the end of a speech
    assert "chatting with v3c" in r.stderr


def default_ctrl_c() -> None:
    """Ctrl+C as a terminal gives it: a suite started in the background of a shell (`cmd &`) has SIGINT
    ignored, which its children inherit, and Python then never turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_answer_not_the_program():
    # An answer that only Ctrl+C ends: no blank line stops it, 5,000 tokens are seconds of text
    proc = subprocess.Popen([sys.executable, str(ROOT / "generate.py"), "-m", str(V3C), "--interactive", "-t", "5000",
                             "--stop", "@@@"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                            preexec_fn=default_ctrl_c)
    try:
        proc.stdin.write("Speak on, and do not stop\n")
        proc.stdin.flush()
        seen = ""
        while "model> " not in seen:
            seen += proc.stdout.read(1)
        time.sleep(0.3)  # mid-answer
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        out, err = proc.communicate("/quit\n", timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    # the answer stopped; the loop asked again; /quit ended it (the message: what to look at if not)
    assert "[stopped]\nyou> " in out, f"{len(out)} characters out, ending {out[-200:]!r}; stderr: {err[-1500:]}"
    assert "Traceback" not in err


def test_json_models_are_not_chat_models(tmp_path):
    import json
    import random

    rng = random.Random(0)
    doc = {"train": [[rng.choice([1, 2, 3]) for _ in range(30)] for _ in range(20)]}
    (tmp_path / "seq.json").write_text(json.dumps(doc))
    assert run_script("training.py", "-d", "seq.json", "-z", "json", "--json-key", "train", "-m", "j", "-i", "quick",
                      "-t", "0", "--n-layer", "1", "--n-embd", "16", "--n-head", "2", "--block-size", "8",
                      cwd=tmp_path).returncode == 0
    r = run_script("chat", "-m", "j", cwd=tmp_path)
    assert r.returncode == 2 and "not a chat model" in r.stderr
