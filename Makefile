# vidseek — the two commands a newcomer runs:
#   make demo   set up, ingest the bundled sample videos, serve the web UI + API on http://127.0.0.1:8000
#               (another port: make demo PORT=8001, or VIDSEEK_PORT=8001 make demo)
#   make test   set up and run the whole test suite (what .ci/run calls)

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install install-test services browser clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or run: make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[onnx]'
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,onnx]'
	@touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

services:
	@scripts/ensure_services.sh

# Another apt/dpkg run (unattended upgrades, a second make) may hold the dpkg lock: wait for it up to 5 minutes.
browser:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian chromium for the browser test"; \
	  (apt-get -o DPkg::Lock::Timeout=300 update -qq && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium >/dev/null) \
	  || { echo "could not install chromium (apt-get as root is needed)"; exit 1; }; }

demo: $(VENV)/.installed
	$(BIN)/vidseek demo $(if $(PORT),--port $(PORT))

test: $(VENV)/.installed-test services browser
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
