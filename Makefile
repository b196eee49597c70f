# Set-up and main jobs. `make run` trains and evaluates the Basic CNN on the default data folder and
# writes the report; `make test` runs the test suite. Both create the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data/all-aria
BIN := $(VENV)/bin

.PHONY: run test install default-bundle bench

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

# The shipped default model: the subtype Basic CNN, int8 TFLite plus int8 ONNX.
BUNDLE_RUN ?= runs/basic-cnn-subtype
default-bundle: install
	test -f $(BUNDLE_RUN)/model.keras || $(BIN)/leukoscreen train --data $(DATA) --task subtype --out $(BUNDLE_RUN)
	rm -rf edge/default_bundle
	$(BIN)/leukoscreen convert $(BUNDLE_RUN) --formats tflite-int8,onnx-int8 --name leukoscreen-default \
		--out edge/default_bundle

bench: install
	$(BIN)/leukoscreen bench edge/default_bundle --out runs/bench-default
