PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench lab clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# Notebooks saved after Run All hold customer data: git commits them stripped (.gitattributes).
	-git rev-parse --git-dir >/dev/null 2>&1 && $(BIN)/nbstripout --install --attributes .gitattributes
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/opsbook demo

# One session: the tests, then every notebook under nbval against the same demo target.
test: $(STAMP)
	$(BIN)/python -m pytest -q -p tests.demo_target --nbval-lax tests notebooks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_slow_queries.py

lab: $(STAMP)
	$(BIN)/opsbook lab

clean:
	-$(BIN)/opsbook demo down
	rm -rf $(VENV) .opsbook
