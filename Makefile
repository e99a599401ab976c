# formerlab — every target that needs Python depends on `setup`, so any of them works first on a fresh clone.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
TORCH  := torch==2.13.0

.PHONY: setup data demo test test-all bench claims lint format clean

setup: $(STAMP) data

# Debian data packages (Fashion-MNIST, fortunes): installed when we are root or have sudo; otherwise a
# note, and the tests that need them skip with the reason.
data:
	@bash scripts/install-debian-data.sh

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (formerlab needs Python >= 3.11; set PYTHON=...)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first, pinned, so nothing later can resolve a CUDA build.
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]' $(TORCH)
	touch $(STAMP)

demo: setup
	$(VENV)/bin/formerlab demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -m "not slow" -q

test-all: setup
	$(PY) -m pytest -q

# formerlab's gpt-small-cpu and Hugging Face GPT-2 of the same size, side by side in one process.
bench: setup
	$(PY) benchmarks/hf_gpt2_speed.py --rounds 2
	$(PY) benchmarks/hf_gpt2_speed.py --rounds 2 --compile

# Every claim check at its quick budget (about half an hour on 2 cores), then the HTML report
# (runs/claims/report.html), written even when a check is broken; the exit status is the run's.
claims: setup
	$(VENV)/bin/formerlab claims run all --budget quick; status=$$?; \
	$(VENV)/bin/formerlab claims report && exit $$status

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
