# The two commands of the README are `make demo` and `make test`; everything else is a helper.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= var/demo
PYTEST_ARGS ?=

.PHONY: setup demo test lint unit integration clean

setup:
	@bash deploy/local/bootstrap.sh

demo: setup
	@rm -rf $(DEMO_DIR)
	$(VENV)/bin/radreport phantoms --n 8 --size 512 --seed 0 --dicom --out $(DEMO_DIR)/phantoms
	$(VENV)/bin/radreport contact-sheet $(DEMO_DIR)/phantoms --out $(DEMO_DIR)/contact_sheet.png --count 8
	@echo
	@head -n 1 $(DEMO_DIR)/phantoms/manifest.jsonl | $(PY) -c 'import json,sys; r=json.load(sys.stdin); print("Sample study", r["study_id"], "(" + r["view"] + ")"); print("FINDINGS:", r["findings_text"]); print("IMPRESSION:", r["impression_text"]); [print("  sentence:", s["text"], "-> box", s["box"], "(" + s["region"] + ")") for s in r["sentences"]]'
	@echo
	@echo "The shipped model's draft of the same study (boxes in image pixels):"
	$(VENV)/bin/radreport draft $$(head -n 1 $(DEMO_DIR)/phantoms/manifest.jsonl | $(PY) -c 'import json,sys; print("$(DEMO_DIR)/phantoms/" + json.load(sys.stdin)["image"])')
	@echo
	@echo "Contact sheet: $(DEMO_DIR)/contact_sheet.png   studies, masks and DICOM: $(DEMO_DIR)/phantoms"

test: setup
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check radreport services tests model_repository
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
