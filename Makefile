# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build of torch; on a machine with a GPU, set TORCH_SPEC to the build you want
# (e.g. `make TORCH_SPEC=torch test`), or install torch into .venv yourself first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: env demo test lint bench clean

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,bench,lint]"
	touch $@

demo: env
	$(VENV)/bin/tensorfold demo

test: env
	$(PY) -m pytest -q -n 2 --dist loadfile

lint: env
	$(VENV)/bin/ruff check tensorfold tests tools
	$(VENV)/bin/ruff format --check tensorfold tests tools
	$(VENV)/bin/mypy

bench: env
	$(PY) -m pytest -q -m slow -p no:xdist

clean:
	rm -rf $(VENV) build *.egg-info
