PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-airflow test-browser bench lab clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# Notebooks saved after Run All hold customer data: git commits them stripped (.gitattributes).
	-git rev-parse --git-dir >/dev/null 2>&1 && $(BIN)/nbstripout --install --attributes .gitattributes
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/opsbook demo

# The tests and every notebook under nbval, spread over TEST_WORKERS processes (pytest-xdist), each
# with a demo target of its own; a module (or a notebook: its cells in order) stays in one worker.
# Most tests wait on kernels, servers and timeouts: on 2 cores, two workers keep both busy.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -p tests.demo_target --nbval-lax -n $(TEST_WORKERS) --dist loadscope tests notebooks

# Airflow in its own virtualenv: Airflow 3.1 is the line that installs beside opsbook's
# SQLAlchemy 2 from PyPI alone (2.x pins SQLAlchemy < 2; its constraints files are not needed).
AIRFLOW_VERSION := 3.1.8
AF_VENV  := .venv-airflow
AF_BIN   := $(AF_VENV)/bin
AF_STAMP := $(AF_VENV)/.installed-$(AIRFLOW_VERSION)

$(AF_STAMP): pyproject.toml
	test -x $(AF_BIN)/python || $(PYTHON) -m venv $(AF_VENV)
	$(AF_BIN)/python -m pip install --quiet --upgrade pip
	$(AF_BIN)/python -m pip install --quiet 'apache-airflow==$(AIRFLOW_VERSION)' -e '.[demo]' 'pytest>=8.0'
	touch $(AF_STAMP)

# Slow (a real Airflow, a real demo target), so not part of `make test`: its own folder, its own venv.
test-airflow: $(AF_STAMP)
	$(AF_BIN)/python -m pytest -q -p no:cacheprovider tests_airflow

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_slow_queries.py

lab: $(STAMP)
	$(BIN)/opsbook lab

# A real browser, kept out of `make test` (the CI machine has no Chromium): Debian's Chromium,
# driven by playwright (which cannot download its own browsers here), runs a runbook in `opsbook lab`.
CHROMIUM      ?= /usr/bin/chromium
BROWSER_STAMP := $(VENV)/.installed-browser

$(BROWSER_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[browser]'
	touch $(BROWSER_STAMP)

test-browser: $(BROWSER_STAMP)
	@test -x '$(CHROMIUM)' || [ '$(CHROMIUM)' != /usr/bin/chromium ] || [ "$$(id -u)" != 0 ] || { \
	  echo "test-browser: installing Debian's chromium"; \
	  apt-cache policy chromium | grep -q 'Candidate: [0-9]' || apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
	@test -x '$(CHROMIUM)' || { echo "test-browser: no Chromium at $(CHROMIUM): install Debian's chromium package (as root: apt-get install chromium) or pass CHROMIUM=/path/to/chromium" >&2; exit 1; }
	OPSBOOK_CHROMIUM='$(CHROMIUM)' $(BIN)/python -m pytest -q -p tests.demo_target tests_browser

clean:
	-$(BIN)/opsbook demo down
	rm -rf $(VENV) $(AF_VENV) .opsbook
