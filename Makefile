# The two commands a newcomer runs: `make demo` and `make test`.
# Both create or reuse .venv and install the project into it first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch/torchvision first and pinned: Ultralytics needs a real torchvision beside a matching torch.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
OUT    ?= runs/demo

.PHONY: install demo test test-fast bench browser clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/cardamage demo --out $(OUT) --overwrite

# pytest-xdist: one worker per core (at most 4), each module on one worker so that its fixtures are built once
XDIST  ?= -n auto --maxprocesses 4 --dist loadscope

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(XDIST)

test-fast: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(XDIST) -m "not slow and not browser"

bench: install
	$(PY) scripts/bench.py demo --part synth

clean:
	rm -rf runs .cache .pytest_cache
