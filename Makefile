# Set-up and main jobs. `make run` scores the shortcut probes, trains and evaluates the Basic CNN on the
# default data folder (4-class, binary, 4-class colour-standardised) and writes the report; `make test` runs the test suite. Both create the virtual environment first.
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
	$(BIN)/leukoscreen data shortcuts $(DATA) --task binary --out runs/shortcuts-binary
	$(BIN)/leukoscreen train --data $(DATA) --task subtype --out runs/basic-cnn-subtype
	$(BIN)/leukoscreen train --data $(DATA) --task binary --out runs/basic-cnn-binary
	$(BIN)/leukoscreen train --data $(DATA) --task subtype --colour standardize --out runs/basic-cnn-subtype-colourstd
	$(BIN)/leukoscreen report runs/basic-cnn-subtype runs/basic-cnn-binary runs/basic-cnn-subtype-colourstd \
		--probes runs/shortcuts-subtype runs/shortcuts-binary --out report

test: install
	$(BIN)/python -m pytest

# The shipped default model: the 4-class Basic CNN trained on colour-standardised fields (it cannot lean
# on all-aria's colour differences), as int8 TFLite plus int8 ONNX.
BUNDLE_RUN ?= runs/basic-cnn-subtype-colourstd
default-bundle: install
	test -f $(BUNDLE_RUN)/model.keras || $(BIN)/leukoscreen train --data $(DATA) --task subtype \
		--colour standardize --out $(BUNDLE_RUN)
	rm -rf edge/default_bundle
	$(BIN)/leukoscreen convert $(BUNDLE_RUN) --formats tflite-int8,onnx-int8 --name leukoscreen-default \
		--out edge/default_bundle

bench: install
	$(BIN)/leukoscreen bench edge/default_bundle --out runs/bench-default
