"""The library is silent: nothing under repytilian/ outside the command line prints or writes to the
terminal's streams; it reports events (events.py), and the command line and the server speak."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "repytilian"
# Where speaking is the point: the command line; the server's own log line (serve/http.py's `log`);
# the scripts' start-up check, which runs before the library's dependencies can be imported.
SPEAKERS = {"cli", "serve/http.py:log", "_bootstrap.py:ensure_dependencies"}


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
