# make bench: set up .venv, build, run the main job (python -m shufflekern bench)
# make test:  set up .venv, build, run the whole test suite (what .ci/run does)
PYTHON3 ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
# CUDA kernels compile without a GPU: nvcc from CUDA_HOME, headers from the pip nvidia packages
# (setup.py adds nvidia/*/include).  SHUFFLEKERN_CUDA=auto builds them when nvcc is found.
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda))
export CUDA_HOME
export SHUFFLEKERN_CUDA ?= auto
export TORCH_CUDA_ARCH_LIST ?= 8.0;9.0
export MAX_JOBS ?= 2

STAMP := $(VENV)/.shufflekern-deps

.PHONY: all build test test-all bench bench-full info clean

all: build

$(STAMP): requirements-dev.txt Makefile
	test -x $(PY) || $(PYTHON3) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1 triton
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# ninja keeps build/ so later builds only recompile what changed.
build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PY) -m shufflekern info
	$(PY) -m pytest tests -q

test-all: build
	$(PY) -m pytest tests -q -m "slow or not slow"

bench: build
	$(PY) -m shufflekern bench

bench-full: build
	$(PY) -m shufflekern bench --full

info: build
	$(PY) -m shufflekern info

clean:
	rm -rf build shufflekern/*.so
