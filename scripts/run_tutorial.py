"""`make tutorial`: run docs/tutorial.ipynb top to bottom in a fresh Jupyter kernel, as a reader would.

It runs in a temporary folder (the notebook's model and export go there), through nbclient, and
fails on any cell's error. It also checks what a reader sees: the training's progress as the
notebook's own bar (a widget), never carriage-return frames piled up in the cell's text, and a
picture from each plotting cell. The time it took is printed; a cell that runs past two minutes
fails (a hang, not a slow machine: the whole notebook takes about a minute on 2 cores).

    python scripts/run_tutorial.py [--keep DIR]   # --keep: run in DIR, leave what it wrote and the outputs
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

NOTEBOOK = Path(__file__).resolve().parent.parent / "docs" / "tutorial.ipynb"
WIDGET = "application/vnd.jupyter.widget-view+json"


def outputs(cell) -> list:
    return cell.get("outputs", [])


def check(nb) -> list[str]:
    """What a reader would find wrong in the executed notebook."""
    problems = []
    code = [c for c in nb.cells if c.cell_type == "code"]
    training = next(c for c in code if "repytilian.train(" in c.source)
    if not any(WIDGET in o.get("data", {}) for o in outputs(training)):
        problems.append("the training cell shows no progress bar widget")
    for cell in code:
        for o in outputs(cell):
            if o.get("output_type") == "stream" and "\r" in o.get("text", ""):
                problems.append(f"carriage-return frames in the output of: {cell.source.splitlines()[0]}")
    for marker in ("plot_folder", "plt.show"):
        cell = next(c for c in code if marker in c.source)
        if not any("image/png" in o.get("data", {}) for o in outputs(cell)):
            problems.append(f"no picture from the cell with {marker}")
    return problems


def main(argv: list[str] | None = None) -> int:
    import nbformat
    from nbclient import NotebookClient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="run in this folder and keep what the notebook wrote")
    args = parser.parse_args(argv)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        here = Path(args.keep or tmp)
        here.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(here)}}).execute()
        took = time.monotonic() - started
        if args.keep:
            nbformat.write(nb, here / NOTEBOOK.name)  # with its outputs, to look at
    problems = check(nb)
    for problem in problems:
        print(f"tutorial: {problem}", file=sys.stderr)
    print(f"docs/tutorial.ipynb ran top to bottom in {took:.0f} s ({len(nb.cells)} cells)"
          + ("" if not problems else f"; {len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
