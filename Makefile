# `make run` and `make test` work on a fresh machine: they create .venv, install the
# package with its extras, fetch Fashion-MNIST through apt where possible, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup data browser run test bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), f"Python >= 3.11 needed, found {sys.version}"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,ray,reference]'
	rm -f $(VENV)/.installed-*; touch $@

data:
	@bash scripts/get-data.sh

setup: $(STAMP) data

# The main job: the default benchmark on the shipped quick zoo (reports/zoo, verified on read),
# writing reports/. `rbl run --profile quick` without --zoo trains its own weights instead.
run: setup
	$(VENV)/bin/rbl run --profile quick --zoo reports/zoo --out reports

# The HTML leaderboard's browser test renders in Debian's chromium.
browser:
	@bash scripts/get-chromium.sh

test: setup browser
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal tests

# Speed targets (ratios against baselines measured in the same run); needs the bench extra.
bench: setup
	$(PY) -m pip install -q -e '.[dev,ray,reference,bench]'
	$(PY) -m pytest -q benchmarks --benchmark-only --benchmark-group-by=group --benchmark-columns=min,median,max,rounds

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
