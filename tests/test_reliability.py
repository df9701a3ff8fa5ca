"""No lost work and no unsafe loading: locks, checkpoints, kill -9, a second Ctrl+C, planted pickles."""
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY, run_script

from repytilian.errors import RepytilianError
from repytilian.model import GPT, ModelConfig
from repytilian.store.folder import load_model_dir, save_model_dir
from repytilian.store.lock import TargetLock
from repytilian.tokenizers import CharacterTokenizer
from repytilian.trainer import StopRequest


def start_training(corpus_file, cwd, *extra) -> subprocess.Popen:
    # endless, so `compile` auto would spend tens of seconds measuring a compile at step 3: not what these test
    cmd = [sys.executable, str(ROOT / "training.py"), "-d", str(corpus_file), "-i", "forever", "-t", "0", *TINY,
           "--set", "compile=false", *extra]
    return subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, text: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    for line in proc.stderr:
        if text in line:
            return
        if time.time() > deadline:
            break
    raise AssertionError(f"never saw {text!r}")


def test_a_second_run_on_the_same_folder_is_refused(corpus_file, tmp_path):
    first = start_training(corpus_file, tmp_path, "-m", "shared")
    try:
        wait_for(first, "kill -USR1")
        second = run_script("training.py", "-d", str(corpus_file), "-m", "shared", "-i", "quick", *TINY, cwd=tmp_path)
        assert second.returncode == 2 and f"another training run (PID {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGUSR1)
        first.communicate(timeout=60)
    assert not (tmp_path / ".shared.lock").exists()  # released at the end


def test_a_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / ".m.lock").write_text(dead.stdout.strip())
    with TargetLock(tmp_path / "m") as lock:
        assert lock.held and (tmp_path / ".m.lock").read_text() == str(os.getpid())


def test_periodic_checkpoints_go_into_the_model_folder(corpus_file, tmp_path):
    r = run_script("training.py", "-d", str(corpus_file), "-m", "m", "--iters", "30", "--checkpoint-every", "10",
                   "-t", "0", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("checkpoint at step") == 2  # 10 and 20; step 30 is the final save
    assert load_model_dir(tmp_path / "m", with_trainer=True).trainer["state"]["step"] == 30


@pytest.mark.slow
def test_kill_9_at_random_moments_never_leaves_a_broken_model(corpus_file, tmp_path):
    rng = random.Random(0)
    steps_seen = []
    for attempt in range(4):  # four kills (each a new process: ~4 s of start-up)
        resume = ["-l", "m"] if attempt else []
        proc = start_training(corpus_file, tmp_path, "-m", "m", "--checkpoint-every", "3", *resume)
        wait_for(proc, "checkpoint at step" if attempt == 0 else "kill -USR1")
        time.sleep(rng.uniform(0.05, 0.6))  # a save every few steps: many kills land in the middle of one
        proc.kill()
        proc.wait()
        loaded = load_model_dir(tmp_path / "m", with_trainer=True)  # the last complete checkpoint
        steps_seen.append(loaded.trainer["state"]["step"])
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.saving-")]
        assert len(leftovers) <= 1  # at most the one the kill interrupted; the next save removes it
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0]
    r = run_script("training.py", "-l", "m", "-m", "m", "--iters", "3", "-t", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not [p for p in tmp_path.iterdir() if ".saving-" in p.name or ".old-" in p.name]


def _tiny_model():
    tok = CharacterTokenizer.train("abc\n")
    return GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8)), tok


def test_a_save_over_a_model_swaps_in_one_step_where_the_system_can(tmp_path, monkeypatch):
    # Was: two renames, and a kill -9 between them (seen in the kill -9 test) left no folder at -m,
    # only .m.old-PID, which the next load could not open.
    import repytilian.store.folder as folder
    from repytilian.runtime.fileio import exchange_paths

    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "x").write_text(d.name)
    if not exchange_paths(a, b):
        pytest.skip("this system or filesystem cannot exchange two paths")
    assert (a / "x").read_text() == "b" and (b / "x").read_text() == "a"
    model, tok = _tiny_model()
    target = save_model_dir(tmp_path / "m", model, tok, {"version": "old"})
    (target / "notes.txt").write_text("mine")
    real_rename = os.rename

    def never_moving_the_model_aside(src, dst):
        assert os.fspath(src) != os.fspath(target), "the model was renamed away: a moment without it"
        return real_rename(src, dst)
    monkeypatch.setattr(folder.os, "rename", never_moving_the_model_aside)
    save_model_dir(target, model, tok, {"version": "new"})
    assert folder.read_config(target)["version"] == "new" and (target / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.")] == []


def test_a_second_ctrl_c_during_a_save_abandons_it_and_keeps_the_old_model(tmp_path, monkeypatch):
    model, tok = _tiny_model()
    path = save_model_dir(tmp_path / "m", model, tok, {"version": "old"})
    import repytilian.store.folder as checkpoint

    real_save_file = checkpoint.save_file

    def impatient(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl+C again while the weights are written
        return real_save_file(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", impatient)
    with StopRequest() as stop, pytest.raises(KeyboardInterrupt):
        stop.saving = True
        save_model_dir(path, model, tok, {"version": "new"})
    assert load_model_dir(path).meta["version"] == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_a_signal_during_the_swap_waits_until_the_new_model_is_in_place(tmp_path, monkeypatch):
    model, tok = _tiny_model()
    path = save_model_dir(tmp_path / "m", model, tok, {"version": "old"})
    import repytilian.store.folder as checkpoint

    real_swap = checkpoint._swap_in

    def swap_with_ctrl_c(staging, target):
        os.kill(os.getpid(), signal.SIGINT)  # deferred: delivered once both renames are done
        real_swap(staging, target)

    monkeypatch.setattr(checkpoint, "_swap_in", swap_with_ctrl_c)
    with StopRequest() as stop, pytest.raises(KeyboardInterrupt):
        stop.saving = True
        save_model_dir(path, model, tok, {"version": "new"})
    assert load_model_dir(path).meta["version"] == "new"


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


@pytest.mark.parametrize("name", ["model.pt", "ckpt.pkl", "model.safetensors"])
def test_a_planted_pickle_is_never_executed(tmp_path, name):
    marker = tmp_path / "pwned"
    folder = tmp_path / "shared_model"
    if name == "model.safetensors":  # a pickle disguised as weights, in an otherwise valid folder
        model, tok = _tiny_model()
        save_model_dir(folder, model, tok, {})
    else:
        folder.mkdir()
    (folder / name).write_bytes(pickle.dumps(Exploit(str(marker))))
    with pytest.raises(RepytilianError, match="pickled files|damaged or truncated"):
        load_model_dir(folder)
    r = run_script("generate.py", "-m", str(folder), "-t", "5", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert not marker.exists()
