# Two commands for a newcomer: `make demo` and `make test`.
# torch is installed first and pinned: the machine has a local CPU wheel of 2.13.0, while an
# unpinned torch (or one pulled in by a dependency) resolves to a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all install clean nnunet-env bench

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# `make test` (what CI runs): every test not marked slow. `make test-all`: the slow tier too
# (the full 48-orientation sweeps, long training runs). Durations: README, "Tests".
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

# nnU-Net v2 for the side-by-side benchmark, in its own venv: its dependencies pull a torchvision
# wheel that does not load with the CPU torch (it is removed; nnU-Net's U-Nets do not need it).
NNUNET_VENV := .venv-nnunet
$(NNUNET_VENV)/.installed:
	@test -x $(NNUNET_VENV)/bin/python || $(PYTHON) -m venv $(NNUNET_VENV)
	$(NNUNET_VENV)/bin/python -m pip install -q torch==2.13.0
	echo "torch==2.13.0" > $(NNUNET_VENV)/constraints.txt
	$(NNUNET_VENV)/bin/python -m pip install -q nnunetv2 -c $(NNUNET_VENV)/constraints.txt
	$(NNUNET_VENV)/bin/python -m pip uninstall -q -y torchvision
	@touch $@

nnunet-env: $(NNUNET_VENV)/.installed

# Benchmarks (minutes; figures go to benchmarks/results/ and are quoted in docs/benchmarks.md).
bench: $(STAMP) $(NNUNET_VENV)/.installed
	test -d benchmarks/work/nnunet/results || $(PY) benchmarks/nnunet_baseline.py prepare
	test -d benchmarks/work/nnunet/results || $(PY) benchmarks/nnunet_baseline.py train --epochs 50
	$(PY) benchmarks/bench_segment.py
	$(PY) benchmarks/bench_memory.py

clean:
	rm -rf $(VENV) $(NNUNET_VENV) build *.egg-info
