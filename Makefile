# The two commands of the README. Both set up .venv on first use.
.PHONY: up test lint setup

setup:
	deploy/local/setup.sh

up: setup
	.venv/bin/luffy up --config configs/tiny-cpu.toml

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
