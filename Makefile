# Entry points: `make demo` (the built-in pipeline on CPU), `make test`, `make lock`.
# Installs come from the lock files in requirements/ (exact versions, sha256 hashes, --no-deps), so
# the same commit installs the same environment on any machine, whenever it runs:
#   LOCK=pypi (default)  requirements/lock-pypi.txt: everything from PyPI. On Linux x86_64 PyPI's torch
#                        is the CUDA 13 build (torch 2.14.1 + the nvidia-* libraries, ~7 GB in .venv); it
#                        runs on CPU too. This is what CI and a machine that reaches only PyPI install.
#   LOCK=cpu             requirements/torch-cpu.txt (torch 2.14.1+cpu from PyTorch's CPU index) and
#                        requirements/lock-cpu.txt (the same pins less torch and the CUDA packages).
# `make lock` re-resolves the locks (uv, pinned below); `make lock UPGRADE=1` moves every pin to the newest
# release the constraints allow. README "Install" says what each variant holds and how big it is.
PYTHON ?= python3
VENV ?= .venv
LOCK ?= pypi
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(LOCK)
UV_VERSION := 0.13.9
UV := .lock-tools/bin/uv
COMPILE = $(UV) pip compile --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	--index-url https://pypi.org/simple $(if $(UPGRADE),--upgrade)

.PHONY: install demo test test-long test-gpu bench lock clean

ifeq ($(LOCK),cpu)
TORCH_FIRST := $(PY) -m pip install -q --no-deps -r requirements/torch-cpu.txt
else
TORCH_FIRST := true
endif

# sam2 compiles against the torch just installed: no build isolation; SAM2_BUILD_CUDA=0, no CUDA extension.
# pip check: the lock is complete (installed with --no-deps, nothing outside it comes in).
$(STAMP): requirements/lock-$(LOCK).txt requirements/sam2.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(TORCH_FIRST)
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements/lock-$(LOCK).txt
	# sam2 compiles against the torch just installed (no build isolation; SAM2_BUILD_CUDA=0: no CUDA extension)
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --require-hashes --no-deps --no-build-isolation -r requirements/sam2.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/full_pipeline.py $(ARGS)

test: $(STAMP)
	RAY_DATA_DISABLE_PROGRESS_BARS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# The end-to-end tests that run a whole job twice, or kill and resume it (minutes each; the `long`
# marker, left out of `make test` so CI stays well under its 30 minutes): reproducibility of the smoke
# pipeline and of the teacher's pretraining, sweep and ablation resume, a killed labeling run, a run
# directory in S3. About 18 minutes on 2 cores.
test-long: $(STAMP)
	RAY_DATA_DISABLE_PROGRESS_BARS=1 $(PY) -m pytest -q -m long $(PYTEST_ARGS)

# On a CUDA machine: the tests that need a GPU (the CUDA variants of the device-parametrized tests, Ray
# Data with a GPU actor, a Ray Train stage with use_gpu). On a CPU machine they all skip ("needs CUDA").
test-gpu: $(STAMP)
	RAY_DATA_DISABLE_PROGRESS_BARS=1 $(PY) -m pytest -q -m gpu -rs $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.contrastive_memory
	$(PY) -m bench.efficiency --presets builtin
	$(PY) -m bench.pseudo_label_throughput --images 480 --per-shard 16

$(UV):
	$(PYTHON) -m venv .lock-tools
	.lock-tools/bin/python -m pip install -q uv==$(UV_VERSION)

# Re-resolve the locks from pyproject.toml + requirements/lock.in (needs pypi.org); the CPU lock is
# derived from the PyPI one. requirements/torch-cpu.txt (two pins) is edited by hand with torch-pypi.txt.
lock: $(UV)
	$(COMPILE) pyproject.toml --extra test --extra export requirements/lock.in -c requirements/torch-pypi.txt \
		-o requirements/lock-pypi.txt
	$(COMPILE) --no-deps requirements/sam2.in -o requirements/sam2.txt
	$(PYTHON) requirements/derive_cpu_lock.py requirements/lock-pypi.txt requirements/lock-cpu.txt

clean:
	rm -rf $(VENV) runs .pytest_cache
