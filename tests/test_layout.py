"""The layout is the architecture: docs/architecture.md's import rules hold in the code."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "repytilian"

ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"


def read_layers() -> dict[str, int]:
    """docs/architecture.md's "What may import what", the one list of layers: each numbered item's
    parts in backquotes outside parentheses ("`data/`" -> data); a part may import its own layer
    and those before it."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    section = text.split("## What may import what", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for number, item in re.findall(r"^(\d+)\. (.*?)(?=^\d+\. |^$|\Z)", section, flags=re.M | re.S):
        for name in re.findall(r"`(\w+)/?`", re.sub(r"\([^)]*\)", "", item)):
            layers[name] = int(number)
    return layers


LAYERS = read_layers()


def part_of(module: str) -> str:
    """repytilian.data.corpus -> data; repytilian.model -> model; repytilian -> __init__."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(absolute repytilian module, line) for every import of the package in a file, lazy ones too."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    here = list(rel.parts[:-1])  # the package the file is in (for __init__.py: its own)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # `from . import x`: x may be a module of that package
                    for alias in node.names:
                        found.append((f"{target}.{alias.name}" if alias.name != "__version__" else target,
                                      node.lineno))
                    continue
            else:
                target = node.module or ""
            if target.split(".")[0] == "repytilian":
                found.append((target, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "repytilian"]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_part_has_a_layer():
    parts = {part_of(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in MODULES}
    assert parts <= set(LAYERS), parts - set(LAYERS)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_part_imports_one_above_it(path):
    me = part_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
    wrong = [f"line {line}: {target}" for target, line in imports_of(path)
             if target != "repytilian" and LAYERS[part_of(target)] > LAYERS[me]]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({me}, layer {LAYERS[me]}) imports above itself: {wrong}"


def test_tokenizers_and_the_model_know_no_files_or_machines():
    for path in (PACKAGE / "tokenizers").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(n.split(".")[0] == "torch" for n in names), path.name
    config = ast.parse((PACKAGE / "config.py").read_text())  # the CLI builds its parsers from it, fast
    assert not [n for n in ast.walk(config) if isinstance(n, ast.Import) and any("torch" in a.name for a in n.names)]
    model = (PACKAGE / "model.py").read_text()
    assert "device.type" not in model and "bfloat16" not in model and "open(" not in model


MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 400


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_rooms_stay_small(path):
    """Modules of at most 400 lines, functions of at most 60: a room that grows past them holds two ideas."""
    source = path.read_text(encoding="utf-8")
    assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name} has {source.count(chr(10))} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: {', '.join(long)}"


def test_every_image_in_the_docs_is_there_and_every_screenshot_is_taken_by_a_test():
    """Images the README and docs/ show exist; the playground screenshots among them are the ones
    the browser tests write and `make screenshots` copies into docs/, so they can be taken again."""
    root = PACKAGE.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    for page in pages:
        for image in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", page.read_text(encoding="utf-8")):
            assert (page.parent / image).is_file(), f"{page.name} shows {image}, which is not there"
    copied = re.search(r"^SCREENSHOTS := (.*)$", (root / "Makefile").read_text(), flags=re.M).group(1).split()
    written = re.findall(r'ARTIFACTS / "([^"]+\.png)"', (root / "tests" / "test_serve.py").read_text())
    assert copied and sorted(copied) == sorted(set(written))
    assert all((root / "docs" / name).is_file() for name in copied)


def test_the_licence_file_is_the_one_pyproject_names_and_the_readme_gives_the_models_terms():
    root = PACKAGE.parent
    named = re.search(r'^license = \{ text = "([^"]+)" \}', (root / "pyproject.toml").read_text(), flags=re.M).group(1)
    assert (root / "LICENSE").read_text().startswith(f"{named} License\n")
    readme = (root / "README.md").read_text()
    assert "come under the MIT licence (`LICENSE`)" in readme and "Tiny Shakespeare" in readme
