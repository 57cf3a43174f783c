# The two commands of the set-up contract: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0

.PHONY: demo demo-finetune test test-fast lint format venv clean bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls gigabytes of CUDA wheels.
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/elmforge demo

# Fine-tuning on the demo model (made first if absent): LoRA SFT, then DPO (docs/finetune.md).
demo-finetune: venv
	test -f runs/demo/averaged/config.json || $(VENV)/bin/elmforge demo
	$(VENV)/bin/elmforge demo --finetune

test: venv
	$(PY) -m pytest -q --durations=30

# The quick loop while working (tests marked slow left out); `make test` before committing.
test-fast: venv
	$(PY) -m pytest -q -m "not slow"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
