# weightshare: every target is idempotent and works on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
EXTRAS := reference,experiments,docs,dev
export NO_MKDOCS_2_WARNING := 1

.PHONY: install test conformance docs docs-src serve-docs bench gpu-check gpu-check-dry-run lint demo matrix wheel-check clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

## The conformance suite (benchmarks excluded), then the strict docs build.
test: install
	$(PY) -m pytest conformance --ignore=conformance/benchmarks
	$(MAKE) docs

conformance: install
	$(PY) -m pytest conformance --ignore=conformance/benchmarks

## mkdocstrings and mypy read the sources statically from build/docs-src/weightshare, a tree of
## links that puts reference/ inside accelerated/ as the installed package has it.
docs-src: install
	rm -rf build/docs-src && mkdir -p build/docs-src/weightshare
	ln -s $(CURDIR)/accelerated/* build/docs-src/weightshare/
	ln -s $(CURDIR)/reference build/docs-src/weightshare/reference

docs: docs-src
	$(VENV)/bin/mkdocs build --strict --site-dir site
	$(PY) -m conformance.offline site

serve-docs: docs-src
	$(VENV)/bin/mkdocs serve

## Benchmarks as JSON (bench.json), then the ratio tables (printed, and written to the snippet
## spec/performance.md includes), then the storage tables (spec/_snippets/storage.md) and the
## entropy coding tables (spec/_snippets/coding.md). One torch thread: on a shared 2-core machine two OpenMP threads
## make torch ops erratic (override with OMP_NUM_THREADS=2 make bench).
bench: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest conformance/benchmarks --benchmark-only --benchmark-json=bench.json -p no:randomly
	$(PY) -m conformance.benchmarks.report bench.json
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m conformance.benchmarks.storage --write
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m conformance.benchmarks.coding --write

## On a machine with CUDA and its own python3 (no venv, no cvxpy, no network; nothing installed):
## the GPU benchmarks, the CUDA cases of the conformance suite (one process per file) and the
## NCCL checks, each part under its own time limit; summary.md and each part's files in $(OUT),
## written as they come. GPU_CHECK_ARGS adds options (--launch-blocking, --budget S, --parts ...).
OUT ?= gpu-check-out
gpu-check:
	$(PYTHON) -m conformance.gpu_check --out $(OUT) $(GPU_CHECK_ARGS)

## The same harness on the CPU (Triton's interpreter, gloo, tiny benchmarks), in a python that has
## the dependencies but not the project, as on the GPU machine: a venv whose one site entry is
## .venv's site-packages, read without its .pth files (so the editable install is not seen).
BARE := build/bare-venv
gpu-check-dry-run: install
	rm -rf $(BARE) && $(PYTHON) -m venv --without-pip $(BARE)
	$(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > \
		"$$($(BARE)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/deps.pth"
	! $(BARE)/bin/python -c 'import weightshare' 2>/dev/null
	$(BARE)/bin/python -m conformance.gpu_check --out $(OUT)-dry-run --dry-run $(GPU_CHECK_ARGS)

## ruff, then mypy (strict; configured in pyproject.toml) on the package tree docs-src links up.
lint: docs-src
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy -p weightshare

## The headline experiment, quick: MNIST-1D (generated locally), original and shuffled positions,
## the published baselines beside ours; under 3 minutes on 2 cores. --dataset digits for 8x8 digits.
demo: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m experiments shuffled-pixels --quick --dataset mnist1d

## Regenerate the requirement -> test matrix shown on spec/conformance.md.
matrix: install
	$(PY) -m conformance.matrix --write

## Build the wheel, install it into a fresh venv and run a copy of some conformance tests
## outside the source tree (as geotorch's CI does).
wheel-check: install
	rm -rf dist
	$(PY) -m build --wheel --no-isolation --outdir dist . > /dev/null
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install --quiet -c constraints.txt "$$(ls dist/*.whl)[reference]" \
		pytest hypothesis; \
	mkdir -p "$$tmp/tests/conformance"; \
	cp conformance/__init__.py conformance/conftest.py conformance/strategies.py \
		conformance/test_penalty.py conformance/test_prox.py conformance/test_installed.py \
		"$$tmp/tests/conformance/"; \
	cp -r conformance/benchmarks "$$tmp/tests/conformance/"; \
	cd "$$tmp/tests" && "$$tmp/venv/bin/python" -m pytest -q -p no:cacheprovider -W error \
		-o addopts="" --ignore=conformance/benchmarks conformance

clean:
	rm -rf site dist build bench.json .pytest_cache .hypothesis
