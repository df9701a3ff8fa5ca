"""The README and the docs stay true: every command they show parses (its flags exist), every
table of measured figures names the date and the machine it was measured on, and the notebook
tutorial is a notebook that uses what it teaches. `make docs` (MkDocs, strict) checks the links
and the navigation; `make tutorial` runs the notebook."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = ("", "sh", "bash", "shell", "console")
PROGRAMS = ("python3 training.py", "python training.py", "python3 generate.py", "python generate.py",
            "repytilian ", "torchrun ", "make ", "python3 benchmarks/", "python benchmarks/", "python3 scripts/",
            "python scripts/")
DATE = re.compile(r"20\d\d-\d\d-\d\d")
MACHINE = re.compile(r"Xeon|EPYC|Ryzen|Intel|AMD|Apple M\d|NVIDIA|H200|A100|Zen \d")
# Table columns that hold measurements (speeds, times, losses, memory), not settings or facts
MEASURED = re.compile(r"tokens/s|GFLOP|\bms\b|ms/step|val loss|\bloss\b|bits per byte|latency|p50|p99|speed-up|"
                      r"ratio|\bMB\b|steps in|time|seconds|per second|tokens per", re.IGNORECASE)


def blocks(text: str):
    """(language, [lines]) of each fenced code block."""
    lang, lines = None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                yield lang, lines
                lang = None
        elif lang is not None:
            lines.append(line)


def inline_commands(text: str) -> list[str]:
    """Commands in `code spans` of the prose (outside code blocks)."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return [span for span in re.findall(r"`([^`\n]+)`", prose) if span.startswith(PROGRAMS)]


def shown_commands() -> list[tuple[str, str, bool]]:
    """(page, command, whole) for each command shown: whole in a code block, a mention in the prose
    (`repytilian export`, `torchrun --standalone ...`), whose flags must exist but not all its arguments."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        shell = [("\n".join(lines), True) for lang, lines in blocks(text) if lang in SHELL_BLOCKS]
        for chunk, whole in shell + [(span, False) for span in inline_commands(text)]:
            for line in chunk.replace("\\\n", " ").splitlines():
                words = command_words(line)
                if words:
                    found.append((page.name, " ".join(shlex.quote(w) for w in words), whole))
    return found


def command_words(line: str) -> list[str]:
    """The words of one command on a shell line: without a prompt, VAR=value before it, a comment,
    or what a pipe, && or a redirection adds after it."""
    line = line.strip().removeprefix("$ ")
    if not (line.startswith(PROGRAMS) or re.match(r"^[A-Z_]+=", line)):
        return []
    words = shlex.split(line, comments=True)
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
    if not " ".join(words).startswith(PROGRAMS):
        return []
    cut = next((i for i, w in enumerate(words) if w in ("|", "&&", ";", ">", "2>", "2>&1")), None)
    return words[:cut]


def _parse(parser: argparse.ArgumentParser, args: list[str], whole: bool) -> None:
    if not whole:  # a mention: its flags exist
        unknown = [a.split("=")[0] for a in args if a.startswith("-") and a != "-" and a.split("=")[0] not in
                   parser._option_string_actions]
        assert not unknown, f"{parser.prog} has no {', '.join(unknown)}"
        return
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            parser.parse_args(args)
    except SystemExit as e:
        if e.code not in (0, None):
            raise AssertionError(err.getvalue().strip().splitlines()[-1]) from None


def _verb(parser: argparse.ArgumentParser, verb: str) -> argparse.ArgumentParser:
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert verb in choices, f"repytilian has no verb {verb!r}"
    return choices[verb]


def as_the_script_reads(script: str, words: list[str]) -> list[str]:
    """The words as training.py and generate.py hand them to their parsers: nanoGPT's `--name=value`
    in this tool's flags; training.py's nanoGPT config file left out (a page's is not here to read)."""
    from repytilian.cli.flags import with_our_flags, with_sample_flags
    from repytilian.cli.nanogpt_config import is_config_file

    if script == "generate.py":
        return with_sample_flags(words)
    return with_our_flags([w for i, w in enumerate(words) if not is_config_file(words, i)])


def check_command(words: list[str], whole: bool = True) -> None:
    from repytilian.cli.generate import add_generate_arguments
    from repytilian.cli.train import add_train_arguments
    from repytilian.cli.verbs import parser as verbs_parser

    training, generating = argparse.ArgumentParser("training.py"), argparse.ArgumentParser("generate.py")
    add_train_arguments(training)
    add_generate_arguments(generating)
    program, rest = words[0], [w for w in words[1:] if whole or w != "..."]  # "..." stands for more in prose
    if program.startswith("python"):
        script, rest = rest[0], rest[1:]
        parsers = {"training.py": training, "generate.py": generating}
        if script in parsers:
            _parse(parsers[script], as_the_script_reads(script, rest), whole)
        else:
            assert (ROOT / script).is_file(), f"{script} is not in the repository"
    elif program == "make":
        targets = re.findall(r"^([a-z][a-z0-9-]*):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert all(t in targets for t in rest if "=" not in t), f"the Makefile has no target {rest}"
    elif program == "torchrun":
        from torch.distributed.run import get_args_parser, parse_args

        if not whole:
            return _parse(get_args_parser(), rest, whole)
        launcher = parse_args(rest)
        script_args = launcher.training_script_args
        if launcher.module:
            assert launcher.training_script == "repytilian" and script_args[0] == "train"
            script_args = script_args[1:]
        else:
            assert launcher.training_script == "training.py"
        _parse(training, script_args, whole)
    elif rest[:1] == ["bench"]:
        from repytilian.cli.bench import _parser

        _parse(_parser(), rest[1:], whole)
    elif whole:
        _parse(verbs_parser(), rest, whole)
    else:
        _parse(_verb(verbs_parser(), rest[0]), rest[1:], whole)


def test_the_docs_show_commands_of_every_kind():
    shown = shown_commands()
    kinds = {c.split()[0] if not c.startswith("python") else c.split()[1].split("/")[0] for _, c, _ in shown}
    assert {"training.py", "generate.py", "repytilian", "torchrun", "make", "benchmarks"} <= kinds, kinds
    assert sum(whole for _, _, whole in shown) > 50


@pytest.mark.parametrize("page, command, whole", shown_commands())
def test_every_command_in_the_readme_and_the_docs_parses(page, command, whole):
    check_command(shlex.split(command), whole)


def test_every_python_block_in_the_readme_and_the_docs_is_python():
    for page in PAGES:
        for lang, lines in blocks(page.read_text(encoding="utf-8")):
            if lang == "python":
                compile("\n".join(lines), page.name, "exec")


def test_the_python_pages_first_example_runs_as_written(tmp_path):
    """A newcomer pastes it from a fresh checkout: it loaded models/shakespeare/basic, which only a
    first training run makes, and failed at its first line."""
    import os
    import subprocess
    import sys

    from repytilian.api import load_model
    from repytilian.interop.convert import export_model

    [code, *_] = ["\n".join(lines) for lang, lines in blocks((ROOT / "docs" / "python.md").read_text()) if lang == "python"]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "shakespeare").symlink_to(ROOT / "models" / "shakespeare")
    (tmp_path / "my_book.txt").write_text((ROOT / "docs" / "training.md").read_text(encoding="utf-8"), encoding="utf-8")
    export_model(load_model(ROOT / "models" / "shakespeare" / "v1c"), "hf", tmp_path / "path" / "to" / "gpt2")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "'Prepared'" in r.stdout and "'Finished'" in r.stdout and "# Repytilian model" in r.stdout
    assert (tmp_path / "book.gguf").stat().st_size > 0 and (tmp_path / "models" / "gpt2" / "config.json").is_file()
    assert (tmp_path / "models" / "book" / "loss.png").is_file()


def tables(text: str):
    """(first line number, [lines]) of each Markdown table outside code blocks."""
    lines, start, fence = text.splitlines(), None, False
    for i, line in enumerate(lines + [""]):
        fence ^= line.startswith("```")
        if line.startswith("|") and not fence:
            start = i if start is None else start
        elif start is not None:
            yield start, lines[start:i]
            start = None


def test_every_table_of_measured_figures_names_its_date_and_machine():
    missing = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for start, table in tables("\n".join(lines)):
            measured = [h for h in table[0].split("|") if MEASURED.search(h)]
            if not measured or not any(re.search(r"\d", row) for row in table[2:]):
                continue
            # The words around a table: the paragraph before it (and its header), and the lines after
            before = start
            while before > 0 and not lines[before - 1].strip():
                before -= 1
            while before > 0 and lines[before - 1].strip() and not lines[before - 1].startswith("#"):
                before -= 1
            context = "\n".join(lines[max(0, before - 1):start + len(table) + 8])
            if not (DATE.search(context) and MACHINE.search(context)):
                missing.append(f"{page.name}:{start + 1} ({', '.join(h.strip() for h in measured)})")
    assert not missing, "tables of figures without the date and machine they were measured on: " + "; ".join(missing)


def test_the_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 210
    linked = set(re.findall(r"\]\(docs/([a-z-]+\.md)\)", readme))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"the README links no docs page {sorted(pages - linked)}"
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert all(f": {p}" in nav for p in pages | {"index.md", "contributing.md"})


def test_every_link_between_pages_reaches_a_file_of_the_repository():
    """Read where most newcomers read them (GitHub, an editor), the pages' relative links are paths
    of the checkout: the site's own pages (index.md, contributing.md, made from the README and
    CONTRIBUTING.md by scripts/mkdocs_hooks.py) are not there, so a link to one was a dead end there
    while `make docs` (which checks the links as the site sees them) passed."""
    dead = []
    for page in PAGES:
        prose = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            path = target.split("#")[0]
            if path and not re.match(r"[a-z]+:", target) and not (page.parent / path).exists():
                dead.append(f"{page.relative_to(ROOT)}: {target}")
    assert not dead, f"links to no file of the repository: {dead}"


def test_the_tutorial_notebook_trains_generates_plots_looks_inside_and_exports():
    nb = json.loads((ROOT / "docs" / "tutorial.ipynb").read_text(encoding="utf-8"))
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")  # committed clean
    for source in code:
        compile(source, "cell", "exec")
    whole = "\n".join(code)
    for used in ("repytilian.train(", "on_screen()", ".generate(", "plot_folder", "attention(", "logit_lens(",
                 "surprise(", "export_model("):
        assert used in whole, used


def test_in_a_notebook_progress_is_the_notebooks_own_bar(monkeypatch):
    """Off a terminal, progress is plain lines; in a Jupyter kernel it is tqdm's notebook widget
    (carriage-return frames would pile up in the cell). `make tutorial` checks it in a real kernel."""
    pytest.importorskip("ipywidgets")
    from tqdm.notebook import tqdm as notebook_tqdm

    from repytilian.cli import progress

    assert not progress.in_notebook() and isinstance(progress.progress(10, "step", "training"),
                                                     progress.LineProgress)
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    bar = progress.progress(10, "step", "training", dynamic_ncols=True, leave=True)
    assert isinstance(bar, notebook_tqdm)
    bar.close()
