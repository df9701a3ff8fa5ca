"""The seed README's commands, run as a user runs them: real processes, real signals."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_script


def trained(corpus_file, tmp_path, *extra) -> str:
    model = str(tmp_path / "models" / "mine")
    r = run_script("training.py", "-d", str(corpus_file), "-m", model, "-i", "quick", "-t", "0", *TINY, *extra,
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return model


def assert_user_error(r: subprocess.CompletedProcess, *fragments: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    for fragment in fragments:
        assert fragment in r.stderr, r.stderr


def test_training_py_flags_from_the_seed_readme(corpus_file, tmp_path):
    r = run_script("training.py", "-d", str(corpus_file), "-m", "models/mine", "-s", "default", "-i", "quick",
                   "-t", "40", "-z", "characters", *TINY, cwd=tmp_path, process=True)
    assert r.returncode == 0, r.stderr
    assert "PID" in r.stderr and "kill -USR1" in r.stderr
    assert len(r.stdout.strip()) > 10  # the -t sample goes to stdout, logs to stderr
    for name in ("config.json", "tokenizer.json", "model.safetensors", "metrics.jsonl", "trainer_state"):
        assert (tmp_path / "models" / "mine" / name).exists()


def test_training_on_a_folder_with_words(corpus_file, tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "one.txt").write_text(corpus_file.read_text())
    (folder / "sub" / "two.txt").write_text(corpus_file.read_text()[::-1])
    r = run_script("training.py", "-p", str(folder), "-z", "words", "-m", "w", "-i", "quick", "-t", "5", *TINY,
                   cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "w" / "config.json").read_text())["tokenizer"] == "words"


def test_generate_py_flags_from_the_seed_readme(corpus_file, tmp_path):
    model = trained(corpus_file, tmp_path)
    out = tmp_path / "out.txt"
    r = run_script("generate.py", "-m", model, "-t", "30", "-c", "the king", "-f", str(out), "-ft", "60",
                   "--seed", "1", cwd=tmp_path, process=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the king")
    in_file = out.read_text()
    assert in_file.startswith("the king") and len(in_file) == len("the king") + 60  # characters: 1 token = 1 char
    assert r.stdout.rstrip("\n") == in_file[: len("the king") + 30]  # stdout gets a prefix of the same text
    again = run_script("generate.py", "-m", model, "-t", "30", "-c", "the king", "--seed", "1", cwd=tmp_path)
    assert again.stdout == r.stdout  # same seed, same text


def test_generate_only_to_a_file(corpus_file, tmp_path):
    model = trained(corpus_file, tmp_path)
    r = run_script("generate.py", "-m", model, "-t", "0", "-f", "o.txt", "-ft", "25", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout == "" and "nothing is generated" not in r.stderr
    assert len((tmp_path / "o.txt").read_text()) == 25
    nothing = run_script("generate.py", "-m", model, "-t", "0", cwd=tmp_path)  # was silent: no text, no word
    assert nothing.returncode == 0 and nothing.stdout == "" and "-t 0 asks for no tokens" in nothing.stderr
    nested = run_script("generate.py", "-m", model, "-t", "0", "-f", "out/today/o.txt", "-ft", "5", cwd=tmp_path)
    assert nested.returncode == 0, nested.stderr  # was: cannot write out/today/o.txt, after generating
    assert len((tmp_path / "out" / "today" / "o.txt").read_text()) == 5


def test_unknown_prompt_characters_are_a_clear_error(corpus_file, tmp_path):
    model = trained(corpus_file, tmp_path)
    assert_user_error(run_script("generate.py", "-m", model, "-c", "ZeXa", cwd=tmp_path), "'X', 'Z'")
    # "\n" typed in a shell's quotes is a backslash and an n: said "unknown character '\\'" alone
    v2c = str(ROOT / "models" / "shakespeare" / "v2c")
    typed = run_script("generate.py", "-m", v2c, "-c", "ROMEO:\\nJULIET:", "-t", "5", cwd=tmp_path)
    assert_user_error(typed, "A line break typed as \\n is a backslash and an n to the shell: write -c $'ROMEO:")


def test_unknown_prompt_words_suggest_known_ones(corpus_file, tmp_path):
    model = trained(corpus_file, tmp_path, "-z", "words")
    assert_user_error(run_script("generate.py", "-m", model, "-c", "the King", cwd=tmp_path),
                      "unknown word 'King'", "did you mean 'king'")


def test_generate_without_a_model_says_how_to_train_one(tmp_path):
    assert_user_error(run_script("generate.py", cwd=tmp_path), "models/shakespeare/basic", "training.py")


def test_generate_with_empty_model_trains_and_saves_nothing(corpus_file, tmp_path):
    r = run_script("generate.py", "-m", "", "-t", "20", "-d", str(corpus_file), "-i", "quick", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip()) > 0
    assert not (tmp_path / "models").exists()


def test_training_with_empty_model_saves_nothing(corpus_file, tmp_path):
    r = run_script("training.py", "-m", "", "-d", str(corpus_file), "-i", "quick", "-t", "10", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.iterdir()) == [corpus_file]


def test_repytilian_command_trains_and_generates(corpus_file, tmp_path):
    # presets as typed, in any case: `-i Quick`, `--arch Classic` were "unknown preset", "invalid choice"
    r = run_script("train", "--data", str(corpus_file), "--out", "m", "-i", "Quick", "--arch", "Classic", "-t", "0",
                   "--seed", "3", "--device", "cpu", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["train"]["max_iters"] == 50  # quick's
    g = run_script("generate", "-m", "m", "-t", "20", "-c", "the", cwd=tmp_path)
    assert g.returncode == 0 and g.stdout.startswith("the")


@pytest.mark.parametrize("args, fragments", [
    (["-d", "missing.txt"], ["no such file: missing.txt"]),
    (["-s", "giant"], ["unknown -s preset 'giant'", "tiny, default, speedrun, hyper, quarter, auto"]),  # auto was left out
    (["-i", "sometimes"], ["unknown -i preset 'sometimes'"]),
    (["-i", "7", "--iters", "9"], ["-i 7 and --iters 9 disagree"]),
    (["-i", "0"], ["must be at least 1"]),
    (["-z", "bytes"], ["unknown tokenizer 'bytes'"]),
    (["--n-embd", "30", "--n-head", "4"], ["must be a multiple of n_head"]),
    (["--set", "colour=blue"], ["unknown setting 'colour'"]),
    (["--block-size", "100000"], ["too short for a context of 100000"]),
    (["--device", "cuda"], ["CUDA"]),
])
def test_bad_training_input_is_a_clear_error(corpus_file, tmp_path, args, fragments):
    if args == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("a machine with a GPU trains on it")  # was: read pytest's command line, not the hardware
    base = ["-d", str(corpus_file), "-i", "quick", "-m", "m"]
    if args and args[0] == "-d":
        base = base[2:]
    r = run_script("training.py", *base, *args, cwd=tmp_path)
    assert_user_error(r, *fragments)


def test_a_number_for_i_is_a_number_of_steps(corpus_file, tmp_path):
    r = run_script("training.py", "-d", str(corpus_file), "-m", "", "-i", "7", "-t", "0", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # it was: unknown -i preset '7'
    assert "finished 7 steps" in r.stderr


def test_bad_numbers_are_refused_by_the_parser(tmp_path):
    r = run_script("generate.py", "-t", "-5", cwd=tmp_path)
    assert r.returncode == 2 and "must not be negative" in r.stderr


def test_loading_with_another_tokenizer_is_refused(corpus_file, tmp_path):
    model = trained(corpus_file, tmp_path)
    r = run_script("training.py", "-l", model, "-z", "words", "-m", model, cwd=tmp_path)
    assert_user_error(r, "trained with the 'characters' tokenizer")


def test_ctrl_c_while_generating_to_a_file_writes_what_was_sampled(tmp_path):
    v2c = ROOT / "models" / "shakespeare" / "v2c"
    proc = subprocess.Popen([sys.executable, str(ROOT / "generate.py"), "-m", str(v2c), "-t", "1000000", "-f",
                             "story.txt", "--seed", "1"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shown = proc.stdout.read(300)  # it is sampling
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"Traceback" not in stderr, stderr
    written = (tmp_path / "story.txt").read_bytes()  # was: nothing, a night's text lost
    assert written.startswith(shown) and b"stopped by Ctrl+C" in stderr
    assert (shown + rest).rstrip(b"\n").startswith(written[:-1])  # the screen's text, but for a token in flight


def _start_forever(corpus_file, tmp_path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "training.py"), "-d", str(corpus_file), "-m", "models/target", "-i", "forever",
           "-t", "0", *TINY, "--set", "compile=false"]  # endless: `compile` auto would measure at step 3
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    for line in proc.stderr:  # wait until training announces that signals are handled
        if "kill -USR1" in line or time.time() > deadline:
            break
    time.sleep(1.0)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_to_interrupted_and_leaves_the_target_alone(corpus_file, tmp_path, sig):
    proc = _start_forever(corpus_file, tmp_path)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    saved = list((tmp_path / "models" / "interrupted").iterdir())
    assert len(saved) == 1 and f"training.py -l {saved[0].relative_to(tmp_path)} -m models/target" in stderr
    assert not (tmp_path / "models" / "target").exists()

    # ...and the resume command it printed works: continue for a few steps, then save to -m.
    r = run_script("training.py", "-l", str(saved[0]), "-m", "models/target", "--iters", "5", "-t", "5", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming at step" in r.stderr
    assert (tmp_path / "models" / "target" / "model.safetensors").is_file()


def test_bootstrap_message_without_dependencies(tmp_path):
    # A Python without torch, and no .venv beside the script: a hint, not an ImportError.
    scratch = tmp_path / "checkout"
    scratch.mkdir()
    (scratch / "repytilian").symlink_to(ROOT / "repytilian")
    (scratch / "generate.py").write_text((ROOT / "generate.py").read_text())
    script = str(scratch / "generate.py")
    r = subprocess.run([sys.executable, "-S", "-c",
                        f"import sys, runpy; sys.path.insert(0, {str(scratch)!r}); sys.modules['torch'] = None; "
                        f"sys.argv = [{script!r}]; runpy.run_path({script!r}, run_name='__main__')"],
                       cwd=scratch, capture_output=True, text=True)
    assert r.returncode == 2 and "make install" in r.stderr


def _checkout_with_the_package(tmp_path) -> Path:
    """A checkout holding the package only (a copy of its files: a link would lead to this one's .venv)."""
    scratch = tmp_path / "checkout"
    shutil.copytree(ROOT / "repytilian", scratch / "repytilian", ignore=shutil.ignore_patterns("__pycache__"))
    return scratch


def test_python_m_repytilian_without_dependencies_says_how_to_install(tmp_path):
    # The README's `repytilian ...` commands as `python3 -m repytilian ...` from a checkout, with a
    # Python that has no torch and no .venv beside: a hint, not an ImportError traceback.
    scratch = _checkout_with_the_package(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("REPYTILIAN_REEXEC", "PYTHONPATH", "VIRTUAL_ENV")}
    base = getattr(sys, "_base_executable", None) or sys.executable
    r = subprocess.run([base, "-S", "-m", "repytilian", "--help"], cwd=scratch, capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2 and "make install" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the suite is not running inside a virtual environment")
def test_python_m_repytilian_runs_under_the_checkouts_venv(tmp_path):
    # `repytilian` is in .venv/bin, which a new user has not activated: `python3 -m repytilian`
    # from the checkout re-runs itself under .venv/bin/python, as training.py and generate.py do.
    scratch = _checkout_with_the_package(tmp_path)
    (scratch / ".venv").symlink_to(sys.prefix)
    env = {k: v for k, v in os.environ.items() if k not in ("REPYTILIAN_REEXEC", "PYTHONPATH", "VIRTUAL_ENV")}
    base = getattr(sys, "_base_executable", None) or sys.executable
    r = subprocess.run([base, "-S", "-m", "repytilian", "serve", "--help"], cwd=scratch, capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--max-batch" in r.stdout and "not installed" not in r.stderr


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="the suite is not running inside a virtual environment")
def test_the_system_python_runs_the_scripts_under_the_checkouts_venv(tmp_path):
    # A checkout whose .venv is the venv these tests run in, started by the interpreter that venv
    # was made from, without its site-packages (-S): no torch there, so the script must re-run
    # itself under .venv/bin/python, which is a symlink to that very interpreter.
    scratch = tmp_path / "checkout"
    scratch.mkdir()
    (scratch / "repytilian").symlink_to(ROOT / "repytilian")
    (scratch / ".venv").symlink_to(sys.prefix)
    (scratch / "generate.py").write_text((ROOT / "generate.py").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("REPYTILIAN_REEXEC", "PYTHONPATH", "VIRTUAL_ENV")}
    base = getattr(sys, "_base_executable", None) or sys.executable
    r = subprocess.run([base, "-S", str(scratch / "generate.py"), "--help"], cwd=scratch, capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "--temperature" in r.stdout and "not installed" not in r.stderr


def test_repytilian_alone_lists_its_commands(capsys):
    """Was "error: the following arguments are required: COMMAND", with no word of which there are."""
    from repytilian import cli

    assert cli.main([]) == 2
    out = capsys.readouterr()
    assert "train" in out.err and "generate" in out.err and "serve" in out.err and "repytilian COMMAND --help" in out.err


@pytest.mark.parametrize("text, value", [("900", 900.0), ("1.5", 1.5), ("90s", 90.0), ("15m", 900.0),
                                         ("15min", 900.0), ("1.5h", 5400.0), ("1h30m", 5400.0), (" 2m 30s ", 150.0)])
def test_times_are_taken_as_people_write_them(text, value):
    """`--budget 15m` was "invalid float value: '15m'" (train, ladder, bench; generate's --max-time, serve's
    --max-seconds)."""
    from repytilian.cli.common import seconds

    assert seconds(text) == value


def test_a_time_that_is_not_one_is_named(tmp_path, capsys):
    from repytilian import cli

    for argv in (["train", "--budget", "15x"], ["generate", "--max-time", "soon"], ["ladder", "--budget", "1h30"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        assert "expected seconds, or a time such as 90s, 15m or 1h30m" in capsys.readouterr().err
    from repytilian.cli.verbs import parser

    parsed = parser().parse_args(["serve", "--max-seconds", "2m"])
    assert parsed.max_seconds == 120.0


def test_number_formats_are_taken_as_people_shorten_them():
    """`--dtype bf16` was "invalid choice: 'bf16' (choose from 'auto', 'float32', 'bfloat16', 'float16')"."""
    from repytilian.cli.verbs import parser as verbs

    parser = verbs()
    assert parser.parse_args(["train", "--dtype", "bf16"]).dtype == "bfloat16"
    assert parser.parse_args(["generate", "--dtype", "FP32"]).dtype == "float32"
    assert parser.parse_args(["serve", "--dtype", "half"]).dtype == "float16"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--dtype", "int8"])


def test_nanogpts_way_of_setting_a_field_is_taken(corpus_file, tmp_path):
    """`--batch_size=32`, `--max_iters 500`, `--compile=False` (nanoGPT's configurator) were
    "unrecognized arguments"; a field without a flag of its own goes through --set."""
    from repytilian.cli.flags import with_our_flags

    assert with_our_flags(["--batch_size=32", "--max_iters", "500", "--warmup_iters=50", "--compile=False",
                           "--eval_iters", "-1", "--qk_norm", "-m", "x", "--dropout=0.1"]) == \
        ["--batch-size=32", "--iters=500", "--set", "warmup_iters=50", "--set", "compile=False",
         "--set", "eval_iters=-1", "--set", "qk_norm=true", "-m", "x", "--dropout=0.1"]
    r = run_script("training.py", "-d", str(corpus_file), "-m", "m", "-t", "0", "--max_iters=3", "--batch_size", "4",
                   "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--warmup_iters=1",
                   "--compile=False", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["train"]["max_iters"] == 3 and saved["train"]["batch_size"] == 4 and saved["model"]["n_layer"] == 1
    assert saved["train"]["warmup_iters"] == 1 and saved["train"]["compile"] is False
    g = run_script("train", "-d", str(corpus_file), "--out", "n", "-t", "0", "--max_iters", "2", *TINY, cwd=tmp_path)
    assert g.returncode == 0 and json.loads((tmp_path / "n" / "config.json").read_text())["train"]["max_iters"] == 2
