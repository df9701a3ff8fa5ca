"""docs/lecture.md names, for each step of the lecture, the code that implements it: every name
must exist, and the lines given must be the lines it spans now."""
import importlib
import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"`(repytilian/[\w/]+)\.py::([\w.]+)`(?:\s*(?:\(|,)\s*lines (\d+)-(\d+))?")


def resolve(path: str, dotted: str):
    obj = importlib.import_module(path.replace("/", "."))
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_step_of_the_lecture_points_at_code_that_is_there():
    text = (ROOT / "docs" / "lecture.md").read_text()
    refs = REFERENCE.findall(text)
    assert len(refs) >= 20
    steps = re.findall(r"^\| (\d+) \|", text, re.M)
    assert [int(s) for s in steps] == list(range(1, 17))
    wrong = []
    for path, dotted, first, last in refs:
        obj = resolve(path, dotted)  # raises if the name is gone
        if first:
            lines, start = inspect.getsourcelines(obj)
            actual = (start, start + len(lines) - 1)
            if actual != (int(first), int(last)):
                wrong.append(f"{path}.py::{dotted} is at lines {actual[0]}-{actual[1]}, not {first}-{last}")
    assert not wrong, "update docs/lecture.md: " + "; ".join(wrong)
