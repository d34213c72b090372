# The two commands of the README. Both set up .venv on first use.
.PHONY: up test lint setup setup-checkov

setup:
	deploy/local/setup.sh

# checkov in a venv of its own, for the Kubernetes manifest test
setup-checkov:
	deploy/local/setup-checkov.sh

up: setup
	.venv/bin/luffy up --config configs/tiny-cpu.toml

test: setup setup-checkov
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
