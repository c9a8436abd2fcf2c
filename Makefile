# make bench: set up .venv, build, run the main job (python -m shufflekern bench)
# make test:  set up .venv, build, run the whole test suite (what .ci/run does)
# make gpu-check: on a machine with a CUDA GPU: CUDA build, the CUDA tests with sync debug mode "error",
#             the bench on the device -> bench/results/gpu_check.md (scripts/gpu_check.py; --dry-run needs no GPU)
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

.PHONY: all build test test-all bench bench-full info clean gpu-check triton-aot

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

# The build is a step of the script (with SHUFFLEKERN_CUDA=1 and this GPU's arch), so only the venv here.
gpu-check: $(STAMP)
	$(PY) scripts/gpu_check.py $(GPU_CHECK_ARGS)

# Every Triton kernel variant the package launches, compiled for sm_80 and sm_90 (no GPU needed).
triton-aot: $(STAMP)
	$(PY) -m shufflekern.triton.aot

info: build
	$(PY) -m shufflekern info

clean:
	rm -rf build shufflekern/*.so
