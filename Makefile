# Set-up and main jobs. `make run` trains and evaluates the Basic CNN on the default data folder and
# writes the report; `make test` runs the test suite. Both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data/all-aria
BIN := $(VENV)/bin

.PHONY: run test install

$(BIN)/leukoscreen: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[train,dev]'
	touch $@

install: $(BIN)/leukoscreen

run: install
	$(BIN)/leukoscreen data shortcuts $(DATA) --task subtype --out runs/shortcuts-subtype
	$(BIN)/leukoscreen train --data $(DATA) --task subtype --out runs/basic-cnn-subtype
	$(BIN)/leukoscreen train --data $(DATA) --task binary --out runs/basic-cnn-binary
	$(BIN)/leukoscreen report runs/basic-cnn-subtype runs/basic-cnn-binary --probes runs/shortcuts-subtype --out report

test: install
	$(BIN)/python -m pytest
