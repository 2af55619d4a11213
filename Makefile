# The two commands of README.md. Each sets up what it needs on a fresh machine.
.PHONY: run test

# Build (or reuse) .venv, then run the whole workflow on the embedded default.
run:
	scripts/bootstrap.sh
	.venv/bin/snakemake

# Build (or reuse) .venv and the system tools the tests use, then run the test suite.
test:
	scripts/bootstrap.sh
	scripts/system-deps.sh
	.venv/bin/python -m pytest
