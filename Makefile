# Two entry points: `make demo` (the built-in pipeline on CPU) and `make test`.
# TORCH_SPEC picks the torch build: the default is the CPU wheel; on a GPU machine use e.g.
# TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128".
# Where only PyPI is reachable the pin does not hold: timm needs torchvision, PyPI's torchvision 0.28.0
# (the match for 2.13) does not import next to torch 2.13.0+cpu ("operator torchvision::nms does not
# exist", checked 2026-12-05), so pip takes torchvision 0.29.1 and with it torch 2.14.1 and its CUDA
# libraries (it runs on CPU; CI runs this way). With the PyTorch index reachable,
# TORCH_SPEC="torch==2.13.0 torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu" keeps it CPU-only.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-gpu bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test,export]"
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q --no-deps --no-build-isolation sam2==1.1.0 hydra-core==1.3.2 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 iopath==0.1.10 portalocker  # [sam2] without torchvision
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) jobs/full_pipeline.py $(ARGS)

test: $(STAMP)
	RAY_DATA_DISABLE_PROGRESS_BARS=1 $(PY) -m pytest -q $(PYTEST_ARGS)

# On a CUDA machine: the tests that need a GPU (the CUDA variants of the device-parametrized tests, Ray
# Data with a GPU actor, a Ray Train stage with use_gpu). On a CPU machine they all skip ("needs CUDA").
test-gpu: $(STAMP)
	RAY_DATA_DISABLE_PROGRESS_BARS=1 $(PY) -m pytest -q -m gpu -rs $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench.contrastive_memory
	$(PY) -m bench.efficiency --presets builtin
	$(PY) -m bench.pseudo_label_throughput --images 480 --per-shard 16

clean:
	rm -rf $(VENV) runs .pytest_cache
