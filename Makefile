# Two commands do everything on a fresh machine:
#   make demo   - generate music with the shipped model (creates .venv and installs on first use)
#   make test   - run the test suite (CI, .ci/run, runs `make lint` and then this)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.notelm-installed

.PHONY: demo test test-fast lint bench install clean

demo: $(STAMP)
	$(BIN)/notelm demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# ruff comes with the dev extra; its rules are in pyproject.toml ([tool.ruff])
lint: $(STAMP)
	$(BIN)/python -m ruff check .

install: $(STAMP)

# torch first, pinned to the CPU wheel on these machines: a bare `torch` requirement
# with nothing installed would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip show torch >/dev/null 2>&1 || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,web]'
	scripts/get-soundfont.sh $(VENV)/share/notelm
	# the browser test (tests/test_web.py) drives Debian's Chromium: as root, install it when missing
	test -x /usr/bin/chromium || [ "$$(id -u)" != 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
		|| { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; } \
		|| echo "note: could not install chromium; the browser test will be skipped"
	touch $(STAMP)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
