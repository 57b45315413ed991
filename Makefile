# Two commands on a fresh machine: `make run` serves, `make test` tests. Each sets itself up.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on local disk; a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install run test test-fast bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q $(TORCH)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

run: install
	$(VENV)/bin/hitl serve

# pytest exits 5 when nothing was collected; that is not a failure here.
test: install
	$(PY) -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test-fast: install
	$(PY) -m pytest -m "not slow and not browser and not fuzz" -x

clean:
	rm -rf $(VENV) var .pytest_cache
