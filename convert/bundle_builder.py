"""`leukoscreen convert`: a trained run -> a model bundle for the device.

Each requested format is written, loaded back through the device runtime code in `edge/` (not through
TensorFlow) and evaluated on the run's test split beside the Keras float model. Calibration and the
decision threshold are fitted on the validation split. The manifest records it all with file hashes.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from leukoscreen import __version__
from leukoscreen.edge.bundle import FORMATS, INTENDED_USE, SCHEMA_VERSION, write_manifest
from leukoscreen.edge.preprocessing import PreprocessConfig
from leukoscreen.edge.runtimes import TwoStageRunner, open_runner
from leukoscreen.training.metrics import classification_metrics
from leukoscreen.training.prepared_data import PreparedData, prepare, preprocessed_images
from leukoscreen.training.runs import RunFolder
from leukoscreen.training.splits import load_split, save_split

FILE_NAMES = {"tflite-fp32": "model-fp32.tflite", "tflite-dynamic": "model-dynamic.tflite",
              "tflite-int8": "model-int8.tflite", "onnx-fp32": "model-fp32.onnx", "onnx-int8": "model-int8.onnx"}
NEGATIVE_NAMES = ("benign", "hem", "healthy", "normal")


class ConversionError(ValueError):
    """A conversion that must not produce a bundle; the message says why and what to do."""


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConversionError(f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    return sorted(formats, key=FORMATS.index)


def default_negative_classes(class_names: list[str]) -> list[str]:
    negative = [c for c in class_names if c.lower() in NEGATIVE_NAMES]
    if not negative:
        raise ConversionError(f"cannot tell which of {class_names} are non-blast classes; "
                              "pass --negative-classes")
    return negative


def _format_metrics(probabilities, reference, labels, class_names, groups) -> dict:
    metrics = classification_metrics(labels, probabilities, class_names, groups=groups, n_boot=200)
    keep = {k: metrics[k] for k in ("accuracy", "macro_f1", "macro_recall", "macro_specificity")}
    keep["ci95"] = {k: metrics["ci95"][k] for k in ("accuracy", "macro_f1")}
    keep["per_class"] = metrics["per_class"]
    if reference is not None:
        ref = classification_metrics(labels, reference, class_names, n_boot=0)
        keep["accuracy_change"] = keep["accuracy"] - ref["accuracy"]
        keep["macro_f1_change"] = keep["macro_f1"] - ref["macro_f1"]
        keep["top1_agreement"] = float(np.mean(probabilities.argmax(1) == reference.argmax(1)))
        keep["max_probability_difference"] = float(np.abs(probabilities - reference).max())
    return keep


@dataclass
class Source:
    """What a bundle is made from: the Keras model each format exports, and what describes it."""
    model: object                  # Keras model; for a two-stage bundle the feature extractor
    reference: Callable            # uint8 images -> the float model's class probabilities
    prepared: PreparedData         # the data set with the run's split
    preprocess: PreprocessConfig
    split_file: Path
    training: dict                 # recorded in the manifest
    seed: int = 0
    # two-stage (thesis Model 1): (features, labels) -> a fitted scikit-learn classifier; each format gets
    # one fitted on the features that format computes, so int8 feature drift is learnt, not suffered
    fit_classifier: Callable | None = None


def run_source(run: RunFolder) -> Source:
    """A trained run folder (`leukoscreen train`)."""
    from leukoscreen.training.evaluation import predict_probabilities
    config, extra = run.config(), run.extra()
    model = run.load_model()
    prepared = prepare(config.data, config.task, config.kind, config.block_size, config.near_distance,
                       config.seed, split_file=run.split_file)
    training = {"model": config.model, "data": Path(config.data).name, "task": config.task,
                "split_method": extra.get("split_method", ""), "run": run.path.name,
                "trained_precision": extra.get("trained_precision", "float32")}
    return Source(model, lambda images: predict_probabilities(model, images), prepared, config.preprocess,
                  run.split_file, training, config.seed)


def convert_run(run_path: Path, out: Path, formats: list[str], representative: int = 500,
                max_accuracy_drop: float = 0.01, allow_drop: bool = False, target_sensitivity: float = 0.99,
                negative_classes: list[str] | None = None, name: str | None = None, version: str = "1",
                io_type: str = "int8", threads: int = 2, classifier: str | None = None,
                per_channel: bool = True, size_ratio: float | None = None, bias_correction: int = 64) -> dict:
    """Convert a trained run, or a Model 1 run (`leukoscreen classical`: a two-stage bundle of the
    backbone's feature extractor and the chosen classifier, `classifier` or the best cross-validated).
    size_ratio: make the int8 TFLite file at least this many times smaller than float32 by giving some
    convolutions per-tensor weights (`to_tflite_mixed`). bias_correction: how many of the representative
    images correct the biases of the int8 TFLite and static int8 ONNX files against float32; 0 leaves them."""
    from leukoscreen.convert.bias_correction import correct_biases, correct_onnx_biases
    from leukoscreen.convert.calibration import decision_parameters, describe_outcomes, screening_outcomes
    from leukoscreen.convert.exporters import (classifier_to_onnx, make_reproducible, quantize_onnx, to_onnx, to_tflite,
                                               to_tflite_mixed)
    if bias_correction < 0:
        raise ConversionError(f"--bias-correction takes a number of images (0 turns it off), not {bias_correction}")
    if size_ratio and "tflite-int8" not in formats:
        raise ConversionError("--size-ratio applies to the tflite-int8 file; add tflite-int8 to --formats")
    if size_ratio and (io_type != "int8" or not per_channel):
        raise ConversionError("a size ratio chooses which convolutions get per-tensor weights: it works with "
                              "int8 input and output and per-channel quantization; drop --int8-io uint8 or "
                              "--per-tensor, or drop --size-ratio")

    run_path = Path(run_path)
    print(f"[1/4] loading {run_path} and its split")
    if (run_path / "classical.json").exists():
        from leukoscreen.training.classical import classical_source
        source = classical_source(run_path, classifier)
    else:
        source = run_source(RunFolder(run_path))
    model, prepared, preprocess = source.model, source.prepared, source.preprocess
    classes = prepared.class_names
    negative_classes = negative_classes or default_negative_classes(classes)

    def images(part):
        index = prepared.part(part)
        return preprocessed_images([prepared.paths[i] for i in index], [prepared.sha256s[i] for i in index],
                                   preprocess), prepared.labels[index], index

    train_images, train_labels, _ = images("train")
    val_images, val_labels, _ = images("val")
    test_images, test_labels, test_index = images("test")
    groups = [prepared.rows[i].group for i in test_index]
    rng = np.random.default_rng(source.seed)
    calibration_set = train_images[rng.permutation(len(train_images))[:representative]]
    keras_test = source.reference(test_images)
    metrics = {"keras-fp32": _format_metrics(keras_test, None, test_labels, classes, groups)}

    out.mkdir(parents=True, exist_ok=True)
    files, inputs, val_outputs, test_outputs = {}, {}, {}, {}
    recurrent = source.training.get("model") == "odrnn"
    quantization = {"representative_images": len(calibration_set),
                    "tflite-int8": "full integer, " + ("per-channel" if per_channel else "per-tensor") + " weights",
                    "onnx-int8": "dynamic: int8 weights, activations at run time" if recurrent
                    else "static QDQ, per-channel weights"}
    onnx_fp32 = out / FILE_NAMES["onnx-fp32"]
    if any(f.startswith("onnx") for f in formats):
        to_onnx(model, onnx_fp32)  # the float32 file, and the source of the int8 one
    # float32 TFLite, made once: the tflite-fp32 file, and the source and reference of tflite-int8
    float_tflite = to_tflite(model, "fp32") if {"tflite-int8", "tflite-fp32"} & set(formats) else None
    correction_set = calibration_set[:bias_correction]

    def corrected_biases(count):
        return f"; biases of {count} layers corrected against float32 on {len(correction_set)} training images"

    for step, fmt in enumerate(formats, 1):
        target = out / FILE_NAMES[fmt]
        print(f"[2/4] ({step}/{len(formats)}) writing {fmt}: {target.name}")
        if fmt == "tflite-int8":
            if size_ratio:
                data, per_tensor = to_tflite_mixed(float_tflite, calibration_set, size_ratio)
                quantization[fmt] = (f"full integer, per-channel weights except {per_tensor} convolutions with "
                                     f"per-tensor weights (OCTAV clipping, ai-edge-quantizer), for at least "
                                     f"{size_ratio}x smaller than float32")
                print(f"      {per_tensor} convolutions have per-tensor weights")
            else:
                data = to_tflite(model, "int8", calibration_set, io_type, per_channel)
            if bias_correction:
                data, corrected = correct_biases(data, float_tflite, correction_set)
                quantization[fmt] += corrected_biases(corrected)
            target.write_bytes(data)
        elif fmt == "tflite-fp32":
            target.write_bytes(float_tflite)
        elif fmt.startswith("tflite"):
            target.write_bytes(to_tflite(model, fmt.split("-")[1], calibration_set, io_type, per_channel))
        elif fmt == "onnx-int8":  # recurrent networks: dynamic quantization (int8 weights)
            quantize_onnx(onnx_fp32, target, calibration_set, dynamic=recurrent)
            if bias_correction and not recurrent:  # it finds layers by the names they have in both files
                quantization[fmt] += corrected_biases(correct_onnx_biases(target, onnx_fp32, correction_set))
            make_reproducible(target)
        runner = features = open_runner(target, threads=threads)  # the device's code; rejects Flex ops
        files[fmt] = {"file": target.name}
        size = target.stat().st_size
        if source.fit_classifier:
            classifier_file = out / f"classifier-{fmt}.onnx"
            print(f"      fitting {source.training['classifier']} on the {fmt} features of {len(train_images)} "
                  "training images")
            train_features = features.outputs(train_images).reshape(len(train_images), -1)
            classifier_to_onnx(source.fit_classifier(train_features, train_labels), train_features.shape[1],
                               classifier_file)
            runner = TwoStageRunner(features, classifier_file)
            files[fmt]["classifier"] = {"file": classifier_file.name}
            size += classifier_file.stat().st_size
        print(f"[3/4] ({step}/{len(formats)}) evaluating {fmt} through {runner.name} on {len(test_images)} "
              "test images")
        test_outputs[fmt] = runner.predict(test_images)
        metrics[fmt] = _format_metrics(test_outputs[fmt], keras_test, test_labels, classes, groups)
        metrics[fmt]["size_bytes"] = size
        val_outputs[fmt] = runner.predict(val_images)
        if fmt.startswith("tflite"):
            scale, zero_point = features.input["quantization"]
            inputs[fmt] = {"dtype": np.dtype(features.input["dtype"]).name, "scale": float(scale),
                           "zero_point": int(zero_point)}
        else:
            inputs[fmt] = {"dtype": "float32", "scale": 1.0, "zero_point": 0}
        print(f"      accuracy {metrics[fmt]['accuracy']:.4f} ({metrics[fmt]['accuracy_change']:+.4f}), "
              f"agreement {metrics[fmt]['top1_agreement']:.4f}, size {metrics[fmt]['size_bytes'] / 1e6:.2f} MB")

    if "onnx-int8" in formats and "onnx-fp32" not in formats:
        onnx_fp32.unlink()  # only an intermediate here
    primary = formats[0]
    print(f"[4/4] calibration and threshold on {len(val_images)} validation images ({primary})")
    decision = decision_parameters(val_outputs[primary], val_labels, classes, negative_classes, target_sensitivity)
    print(f"      threshold {decision['decision']['threshold']:.3f}: {decision['decision']['threshold_rule']}")
    metrics[primary]["screening"] = screening_outcomes(test_outputs[primary], test_labels, classes,
                                                       decision["calibration"]["temperature"], decision["decision"])
    print(f"      on the test split: {describe_outcomes(metrics[primary]['screening'])}")
    # the split travels with the bundle (files by sha256, paths relative to the data folder)
    data = str(prepared.dataset.root)
    save_split(out / "split.csv", [replace(row, path=os.path.relpath(row.path, data))
                                   for row in load_split(source.split_file)])
    manifest = {
        "schema_version": SCHEMA_VERSION, "name": name or run_path.name, "version": version,
        "task": prepared.task, "class_names": classes, "default_format": primary,
        "input": {"size": preprocess.input_size, "channels": 3, "layout": "NHWC",
                  "pixels": "uint8 RGB 0-255 after preprocessing", "per_format": inputs},
        "preprocess": preprocess.to_dict(), "input_kind": "field",
        "output": "sigmoid" if len(classes) == 2 and not source.fit_classifier else "softmax",
        **decision, "files": files, "metrics": metrics,
        "quantization": {k: v for k, v in quantization.items() if k in formats or k == "representative_images"},
        "training": {**source.training, "split_file": "split.csv", "metrics_on": "test split"},
        "software_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "intended_use": INTENDED_USE,
    }
    dropped = [f for f in formats if "int8" in f and -metrics[f]["accuracy_change"] > max_accuracy_drop]
    if dropped and not allow_drop:
        changes = ", ".join(f"{metrics[f]['accuracy_change'] * 100:+.2f}" for f in dropped)
        raise ConversionError(
            f"{', '.join(dropped)} lost more than {max_accuracy_drop * 100:.1f} points of accuracy against the "
            f"float model ({changes} points); no "
            f"manifest was written. Use more --representative images, or --allow-accuracy-drop to accept it")
    write_manifest(out, manifest)
    print(f"bundle: {out} (default format {primary})")
    return manifest
