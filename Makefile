# The two commands of the README. Both set up a fresh machine first (scripts/setup.sh is idempotent).
.PHONY: setup demo test lint bench

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/distat train configs/demo.yaml --overwrite

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check distat tests benchmarks

bench: setup
	.venv/bin/python benchmarks/at_step_cost.py
