# Quickstart targets: each sets up .venv on first use, then runs.
.PHONY: setup test demo

setup:
	bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest -q

demo: setup
	.venv/bin/python examples/demo.py
