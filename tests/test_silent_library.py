"""The library is silent and names settings: nothing under repytilian/ outside the command line
prints or writes to the terminal's streams, and no message of it quotes a command-line flag; it
reports events (events.py) and names settings as the library does (`block_size`), and the command
line and the server word them for their users."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "repytilian"
# Where speaking is the point: the command line; the scripts' start-up check, which runs before the
# library's dependencies can be imported. (The server logs through `logging`; its command shows it.)
SPEAKERS = {"cli", "_bootstrap.py:ensure_dependencies"}


def _speaking(tree: ast.AST):
    """(line, what) for each print(), sys.stdout/sys.stderr use and tqdm import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            yield node.lineno, "print()"
        elif isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") and \
                isinstance(node.value, ast.Name) and node.value.id == "sys":
            yield node.lineno, f"sys.{node.attr}"
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [getattr(node, "module", None) or ""] + [a.name for a in node.names]
            if any(n.split(".")[0] == "tqdm" for n in names):
                yield node.lineno, "tqdm"


def _allowed(rel: str, tree: ast.Module, line: int) -> bool:
    if rel.split("/")[0] in SPEAKERS:
        return True
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and f"{rel}:{node.name}" in SPEAKERS:
            if node.lineno <= line <= node.end_lineno:
                return True
    return False


def test_nothing_outside_the_command_line_prints_or_writes_to_the_terminal():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [f"{rel}:{line}: {what}" for line, what in _speaking(tree) if not _allowed(rel, tree, line)]
    assert not found, "the library speaks (report an event or a note instead):\n" + "\n".join(found)


def test_the_scan_finds_what_it_looks_for():
    tree = ast.parse("import sys\nfrom tqdm import tqdm\nprint('x')\nsys.stderr.write('y')\n")
    assert sorted(what for _, what in _speaking(tree)) == ["print()", "sys.stderr", "tqdm"]


# A flag as a message would quote it: "-m", "-d", "--block-size" (not "x-axis", "bf16-native", "-1")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]+|-[a-zA-Z]{1,2})(?![\w-])")
# Where quoting a command line is the point: the command line itself; the server, which words its
# own messages for its users; the model card, a document for people with the commands that use the
# folder; the scripts' start-up check (pip's -e); the C compiler's command line (its -o and -lm).
WORDS_OF_THEIR_OWN = ("cli/", "serve/", "store/card.py", "_bootstrap.py", "runtime/native_build.py")


def _messages(tree: ast.Module):
    """(line, text) of every string constant that is not a docstring."""
    docs = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_no_library_message_quotes_a_command_line_flag():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(WORDS_OF_THEIR_OWN):
            continue
        for line, text in _messages(ast.parse(path.read_text(encoding="utf-8"))):
            found += [f"{rel}:{line}: {m.group(0)} in {text[:70]!r}" for m in FLAG.finditer(text)]
    assert not found, "name the setting instead (errors.py says how):\n" + "\n".join(found)


def test_the_flag_scan_finds_flags_and_leaves_other_dashes():
    assert [m.group(0) for m in FLAG.finditer("use -m DIR or --block-size 32")] == ["-m", "--block-size"]
    assert not FLAG.search("a bf16-native x-axis, -1 and 2-3 steps")


def test_the_command_line_words_settings_as_flags():
    from repytilian.cli.flags import in_flags
    from repytilian.errors import RepytilianError, SettingError

    error = RepytilianError("use more data or a smaller context (`block_size` 32); give `data_file`", ("block_size",
                                                                                                    "data_file"))
    assert in_flags(error) == "use more data or a smaller context (--block-size 32); give -d"
    assert in_flags(SettingError("learning_rate", "must be more than 0")) == "--lr must be more than 0"
