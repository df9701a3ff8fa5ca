"""nanoGPT's way of configuring a run (`python train.py config/x.py --batch_size=32`) on training.py:
the file is read, never run, and becomes this tool's flags."""
import json

from conftest import run_script

CONFIG = """\
# a small run, written the way nanoGPT's config files are
import time
out_dir = 'out-small'
eval_interval = 2
eval_iters = 2
log_interval = 1
wandb_run_name = 'run-' + str(time.time())
dataset = 'shakespeare_char'
gradient_accumulation_steps = 2 * 2
batch_size = 3
block_size = 16
n_layer = 1
n_head = 2
n_embd = 32
dropout = 0.1
learning_rate = 2e-3
max_iters = 4
lr_decay_iters = 4
min_lr = 2e-4
beta2 = 0.99
warmup_iters = 1
init_from = 'scratch'
compile = False
"""


def test_a_nanogpt_config_file_trains_as_its_flags(tmp_path, corpus_file):
    """Was "unrecognized arguments: config/train_small.py"."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "train_small.py").write_text(CONFIG)
    r = run_script("training.py", "config/train_small.py", "-d", str(corpus_file), "--n_embd=64", "-t", "0",
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "note: read config/train_small.py as nanoGPT's train.py would, without running it:" in r.stderr
    assert "not used here: init_from='scratch'" in r.stderr and "its dataset is nanoGPT's prepared" in r.stderr
    saved = json.loads((tmp_path / "out-small" / "config.json").read_text())  # out_dir is the model's folder
    model, train = saved["model"], saved["train"]
    assert (model["n_layer"], model["n_head"], model["block_size"], model["bias"]) == (1, 2, 16, False)
    assert model["n_embd"] == 64  # the command line's flag after the file wins, as in nanoGPT
    # nanoGPT's step: batch_size sequences a micro-step, gradient_accumulation_steps (2 * 2) of them
    assert (train["batch_size"], train["micro_batch"]) == (12, 3)
    assert (train["max_iters"], train["learning_rate"], train["min_lr"], train["beta2"]) == (4, 2e-3, 2e-4, 0.99)
    assert (train["optimizer"], train["weight_decay"], train["grad_clip"], train["compile"]) == ("adamw", 0.1, 1.0, False)
    assert saved["summary"]["step"] == 4


def test_a_python_file_to_train_on_is_not_a_config_and_a_missing_config_is_named(tmp_path):
    (tmp_path / "script.py").write_text("def hello():\n    return 'the king and queen walk to the castle'\n" * 40)
    r = run_script("training.py", "-d", "script.py", "-m", "m", "--max_iters=2", "--block_size=8", "--n_layer=1",
                   "--n_embd=16", "--n_head=2", "-t", "0", cwd=tmp_path)
    assert r.returncode == 0 and "nanoGPT" not in r.stderr, r.stderr  # -d's value: text to train on
    missing = run_script("training.py", "config/nothing.py", cwd=tmp_path)
    assert missing.returncode == 2 and "error: no such config file: config/nothing.py" in missing.stderr
    (tmp_path / "odd.py").write_text("gradient_accumulation_steps = 40 / 8\nbatch_size = 'twelve'\nx = 1 / 0\n")
    odd = run_script("training.py", "odd.py", cwd=tmp_path)
    assert odd.returncode == 2 and "must be whole numbers, got 'twelve' and 5.0" in odd.stderr, odd.stderr
    (tmp_path / "broken.py").write_text("batch_size = (\n")
    broken = run_script("train", "broken.py", cwd=tmp_path)
    assert broken.returncode == 2 and "cannot read broken.py as a nanoGPT config file (SyntaxError" in broken.stderr


def test_nanogpts_sample_settings_are_generate_pys_flags(tmp_path):
    """`python sample.py --out_dir=... --start="ROMEO:" --max_new_tokens=100` in generate.py's words:
    it was "unrecognized arguments" for every one of them."""
    from conftest import ROOT

    v2c = str(ROOT / "models" / "shakespeare" / "v2c")
    r = run_script("generate.py", f"--out_dir={v2c}", "--start=ROMEO:", "--max_new_tokens=12", "--num_samples=2",
                   "--top_k=5", "--seed=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ours = run_script("generate.py", "-m", v2c, "-c", "ROMEO:", "-t", "12", "--num-samples", "2", "--top-k", "5",
                      "--seed", "1", cwd=tmp_path)
    assert r.stdout == ours.stdout and r.stdout.count("ROMEO:") == 2
    (tmp_path / "prompt.txt").write_text("JULIET:\n")
    from_file = run_script("generate.py", f"--out_dir={v2c}", "--start=FILE:prompt.txt", "--max_new_tokens=5",
                           cwd=tmp_path)
    assert from_file.returncode == 0 and from_file.stdout.startswith("JULIET:\n"), from_file.stderr
