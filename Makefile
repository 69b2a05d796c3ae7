# Every target creates the virtualenv it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo benchmarks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first, so no dependency pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

demo: $(STAMP)
	WANDB_MODE=offline HF_HUB_OFFLINE=1 $(VENV)/bin/sae-lens-crosscoder demo --out demo_out

benchmarks: $(STAMP)
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
