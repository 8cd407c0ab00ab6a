# The two commands of the README: `make demo` and `make test`. Both install from scratch when needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Re-install when pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
export WANDB_MODE ?= offline
export WANDB_SILENT ?= true
export MPLBACKEND ?= Agg

.PHONY: install demo test lint ui status bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $@

## Generate the synthetic demo data and run every built stage through Dagster (resumes if interrupted).
demo: install
	$(BIN)/hms run --stage all --config demo --resume
	$(BIN)/hms status --config demo

## Install, lint (ruff check + ruff format --check) and run the whole test suite (pytest exit code 5 fails).
## Chromium for the browser test: Debian's package, only when missing and only as root with apt-get; never fails.
test: install lint
	-@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && { apt-get update -qq && apt-get install -y -qq chromium; } \
	  || echo "chromium not installed (needs root and apt-get): tests/hms_dagster/test_browser.py will skip"; }
	$(BIN)/python -m pytest -q --timeout=600 --durations=15

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

ui: install
	$(BIN)/hms ui --config demo

status: install
	$(BIN)/hms status --config demo

bench: install
	$(BIN)/python -m benchmarks.preprocess
	$(BIN)/python -m benchmarks.train

clean:
	rm -rf runs/ .pytest_cache
