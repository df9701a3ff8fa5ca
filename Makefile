# The two commands of the README: `make demo` and `make test`. Each creates .venv if missing and
# installs the project into it first, so they work on a fresh machine with nothing but Python.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed before the project, so the project's torch range is already met. Override for your
# machine, e.g. make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu" install
TORCH_SPEC ?= torch==2.13.0

# Tiny Shakespeare without the network: use the shared mirror when it is beside the checkout.
ifeq ($(origin REPYTILIAN_DATA), undefined)
ifneq ($(wildcard ../shared/data/tinyshakespeare.txt),)
export REPYTILIAN_DATA := $(abspath ../shared/data)
endif
endif

.PHONY: install demo test test-avx2 screenshots docs docs-serve tutorial gpu-check gpu-check-dry-run quarter-hour quarter-hour-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(PY) training.py -s speedrun --budget 100 -t 500

# One worker process a core (pytest-xdist; at most 4), each file's tests in one worker (their shared
# models are built once); tests/conftest.py gives each worker one thread.
PYTEST_WORKERS ?= -n auto --maxprocesses 4 --dist loadfile

test: install
	$(PY) -m pytest -q $(PYTEST_WORKERS)

# The tests that depend on the kind of CPU, once more as on an AVX2-only CPU without native bf16
# (torch's and oneDNN's own switches; ../shared/tools/cpu-kind shows that bf16 slows down under them).
test-avx2: install
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(PY) -m pytest -q -m machine $(PYTEST_WORKERS)

# The playground screenshots in docs/, taken again by the browser tests (headless Chromium)
SCREENSHOTS := playground.png playground-card.png inside-attention.png inside-lens.png inside-compare.png
screenshots: install
	$(PY) -m pytest -q tests/test_serve.py -k "browser"
	cd tests/artifacts && cp $(SCREENSHOTS) ../../docs/

# The documentation site (MkDocs, Material theme) from docs/, into build/site: a broken link, an
# anchor that is not there or a page missing from the navigation fails the build.
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# docs/tutorial.ipynb, top to bottom in a fresh Jupyter kernel (about a minute on 2 cores)
tutorial: $(VENV)/.docs-installed
	$(PY) scripts/run_tutorial.py

# Every GPU path run and measured on a CUDA machine (benchmarks/gpu_check.py says what it needs there);
# the dry run goes through the same steps on a CPU, tiny and short, as CI does.
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --json gpu-check.json

gpu-check-dry-run: install
	$(PY) benchmarks/gpu_check.py --dry-run --json build/gpu-check-dry-run.json

# The quarter-hour record (15 minutes of `-s quarter` on Tiny Shakespeare, the whole val split
# scored), and the same script for a few seconds, as CI runs it to keep it working.
quarter-hour: install
	$(PY) benchmarks/bench_quarter_hour.py --json build/quarter-hour.json

quarter-hour-check: install
	$(PY) benchmarks/bench_quarter_hour.py --budget 3 --json build/quarter-hour-check.json

$(VENV)/.docs-installed: $(VENV)/.installed
	$(PY) -m pip install --quiet -e ".[docs,notebook]"
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
