# Set-up and entry points. Every target installs what it needs: Debian's FFmpeg, a virtual environment in .venv,
# the pinned Python packages and this package in editable mode.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed

.PHONY: demo test install

demo: $(STAMP)
	$(PYTHON) examples/demo.py

test: $(STAMP)
	$(PYTHON) -m pytest -q tests

install: $(STAMP)

$(STAMP): setup.py requirements/pinned.txt
	@command -v ffmpeg >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq ffmpeg; }
	@[ -x $(PYTHON) ] || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements/pinned.txt
	$(PYTHON) -m pip install -q --no-deps -e .
	@touch $@
