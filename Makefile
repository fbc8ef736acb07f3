# The two commands of the README are `make demo` and `make test`; everything else is a helper.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= var/demo
PYTEST_ARGS ?=

.PHONY: setup demo test lint unit integration containers gate clean

setup:
	@bash deploy/local/bootstrap.sh

demo: setup
	@DEMO_DIR=$(DEMO_DIR) RADREPORT_VENV=$(VENV) bash deploy/local/demo.sh

test: setup
	$(PY) -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check radreport services tests model_repository
	$(VENV)/bin/mypy

# Every image built from cold with podman, docker-compose.yml and the Helm chart run with a
# smoke test (root; CI runs it as its own step, not in `make test`).
containers: setup
	@RADREPORT_VENV=$(VENV) bash deploy/containers/check.sh

# The release gate (issue 18) on the shipped model: all 1,000 phantom test studies against
# issue 15's goals; exits 1 if any is not met (about 15 minutes on 2 cores; CI runs it).
gate: setup
	$(VENV)/bin/radreport gate radreport/model/default \
		--thresholds radreport/eval/thresholds/phantom-v2.toml --out var/gate

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
