# The two commands of the README. Both set up a fresh machine first (scripts/setup.sh is idempotent).
.PHONY: setup demo test test-fast lint bench

setup:
	@bash scripts/setup.sh

# the demo search: offline attack resources (built once into ~/.cache/distat), then a 4-trial search and its
# paper-style table (dev numbers; `distat evaluate runs/demo-search/demo` adds the test split's)
demo: setup
	.venv/bin/distat resources build --parts nltk vectors similarity
	rm -rf runs/demo-search
	.venv/bin/distat search search_spaces/demo.yaml --storage runs/demo-search
	.venv/bin/distat report runs/demo-search/demo

test: setup
	@bash scripts/ensure_chromium.sh
	.venv/bin/python -m pytest -q --durations=20

# the unit tier only (a few minutes): no Ray, no search subprocess, no real attack, no MLflow server, no browser
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

lint: setup
	.venv/bin/ruff check distat tests benchmarks

bench: setup
	.venv/bin/python benchmarks/at_step_cost.py
