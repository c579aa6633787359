# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv, install the pinned torch build and dsxai with every extra.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.dsxai-installed
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo test bench-engine bench-speed clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dsxai demo --out out/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

bench-engine: $(STAMP)
	$(VENV)/bin/python benchmarks/speed_engine.py

bench-speed: $(STAMP)
	$(VENV)/bin/python benchmarks/speed.py

clean:
	rm -rf out build dist *.egg-info .pytest_cache
