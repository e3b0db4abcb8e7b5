# Quickstart targets: each sets up the virtual environment on first use, then runs.
# VENV (default .venv) and the variables documented in scripts/setup.sh choose what gets installed.
.PHONY: setup test demo
VENV ?= .venv
export VENV

setup:
	bash scripts/setup.sh

test: setup
	$(VENV)/bin/python -m pytest

demo: setup
	$(VENV)/bin/python examples/demo.py
