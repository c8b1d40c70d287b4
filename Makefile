# The two commands the README promises. Both bootstrap first (idempotent, needs root).
.PHONY: demo test lint unit bootstrap

bootstrap:
	scripts/bootstrap

demo: bootstrap
	.venv/bin/python scripts/demo.py

lint:
	.venv/bin/ruff check agent tests scripts bench packaging
	.venv/bin/mypy
	.venv/bin/python scripts/import_contract.py
	promtool check rules packaging/monitoring/*.rules.yml
	promtool check config --syntax-only packaging/monitoring/prometheus-scrape.example.yml

test: bootstrap lint
	.venv/bin/pytest -q tests

unit:
	.venv/bin/pytest -q tests/unit
