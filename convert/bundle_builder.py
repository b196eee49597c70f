"""`leukoscreen convert`: a trained run -> a model bundle for the device.

Three steps. Each requested format is written by its exporter (a registry, one function per format); each
file is loaded back through the device runtime code in `edge/` (not through TensorFlow) and evaluated on the
run's test split beside the Keras float model; then calibration and the decision rule are fitted on the
validation split and the typed manifest (`edge/manifest.py`) records it all with file hashes.
"""
from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
from pydantic import ValidationError

from leukoscreen import __version__
from leukoscreen.edge.bundle import write_manifest
from leukoscreen.edge.manifest import (FORMATS, INTENDED_USE, REFERENCE_METRICS, FormatFile, FormatMetrics,
                                       InputSpec, Manifest, SelfTest, StoredFile, TensorSpec, TrainingRecord)
from leukoscreen.edge.self_test import GENERATOR, TOLERANCE, fields_sha256, generated_fields, largest_difference
from leukoscreen.edge.runtimes import ModelRunner, RuntimeOptions, TwoStageRunner, open_runner
from leukoscreen.edge.validation import describe
from leukoscreen.training.cell_data import crop_field, read_cell_geometry
from leukoscreen.training.metrics import classification_metrics, describe_outcomes, screening_outcomes
from leukoscreen.training.model_source import Source, load_source
from leukoscreen.training.prepared_data import preprocessed_images
from leukoscreen.training.splits import load_split, save_split
from leukoscreen.edge.image_io import ImageReadError, read_image

FILE_NAMES = {"tflite-fp32": "model-fp32.tflite", "tflite-dynamic": "model-dynamic.tflite",
              "tflite-int8": "model-int8.tflite", "onnx-fp32": "model-fp32.onnx", "onnx-int8": "model-int8.onnx"}
NEGATIVE_NAMES = ("benign", "hem", "healthy", "normal", "non-blast")
TFLITE_DERIVED = ("the tflite-int8 file's quantization, QDQ (tf2onnx from the int8 TFLite file: the same weights, "
                  "scales and zero points)")


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


@dataclass(frozen=True)
class ConvertOptions:
    """What `leukoscreen convert` was asked for (see its --help)."""
    representative: int = 500
    max_accuracy_drop: float = 0.01
    allow_drop: bool = False
    target_sensitivity: float = 0.99
    negative_classes: list[str] | None = None
    name: str | None = None
    version: str = "1"
    io_type: str = "int8"
    threads: int = 2
    classifier: str | None = None
    per_channel: bool = True
    size_ratio: float | None = None   # int8 TFLite at least this many times smaller than float32
    bias_correction: int = 64         # representative images that correct the int8 biases; 0: off

    def check(self, formats: list[str]) -> None:
        if self.bias_correction < 0:
            raise ConversionError(f"--bias-correction takes a number of images (0 turns it off), not "
                                  f"{self.bias_correction}")
        if self.size_ratio and "tflite-int8" not in formats:
            raise ConversionError("--size-ratio applies to the tflite-int8 file; add tflite-int8 to --formats")
        if self.size_ratio and (self.io_type != "int8" or not self.per_channel):
            raise ConversionError("a size ratio chooses which convolutions get per-tensor weights: it works with "
                                  "int8 input and output and per-channel quantization; drop --int8-io uint8 or "
                                  "--per-tensor, or drop --size-ratio")


@dataclass
class Part:
    """Preprocessed images of one part of the run's split, with their labels and groups."""
    images: np.ndarray
    labels: np.ndarray
    groups: list
    fields: list[str] | None = None   # cell sets: the field each crop was cut from


@dataclass
class Job:
    """What every exporter shares: the run, the options, the calibration images, the float files, and the
    self-test's generated fields with the float model's answers on them."""
    source: Source
    out: Path
    options: ConvertOptions
    calibration_set: np.ndarray
    _float_tflite: bytes | None = field(default=None, repr=False)

    def __post_init__(self):
        self.self_test_fields = generated_fields(self.source.preprocess.input_size)
        self.self_test_reference = self.source.reference(self.self_test_fields)

    def self_test(self) -> SelfTest:
        return SelfTest(generator=GENERATOR, fields=len(self.self_test_fields),
                        fields_sha256=fields_sha256(self.self_test_fields),
                        reference=np.round(self.self_test_reference, 6).tolist(), tolerance=TOLERANCE)

    @property
    def recurrent(self) -> bool:
        return self.source.training.get("model") == "odrnn"

    @property
    def correction_set(self) -> np.ndarray:
        return self.calibration_set[:self.options.bias_correction]

    def corrected(self, layers: int) -> str:
        return f"; biases of {layers} layers corrected against float32 on {len(self.correction_set)} training images"

    def float_tflite(self) -> bytes:
        """The float32 TFLite file, made once: the tflite-fp32 file, and the source and reference of tflite-int8."""
        from leukoscreen.convert.exporters import to_tflite
        if self._float_tflite is None:
            self._float_tflite = to_tflite(self.source.model, "fp32")
        return self._float_tflite

    def float_onnx(self) -> Path:
        """The float32 ONNX file, made once: the onnx-fp32 file, and the source of onnx-int8."""
        from leukoscreen.convert.exporters import to_onnx
        path = self.out / FILE_NAMES["onnx-fp32"]
        if not path.exists():
            to_onnx(self.source.model, path)
        return path


def _tflite_int8(job: Job, target: Path) -> str:
    from leukoscreen.convert.bias_correction import correct_biases
    from leukoscreen.convert.exporters import to_tflite, to_tflite_mixed
    options = job.options
    if options.size_ratio:
        data, per_tensor = to_tflite_mixed(job.float_tflite(), job.calibration_set, options.size_ratio)
        note = (f"full integer, per-channel weights except {per_tensor} convolutions with per-tensor weights (OCTAV "
                f"clipping, ai-edge-quantizer), for at least {options.size_ratio}x smaller than float32")
        print(f"      {per_tensor} convolutions have per-tensor weights")
    else:
        data = to_tflite(job.source.model, "int8", job.calibration_set, options.io_type, options.per_channel)
        note = "full integer, " + ("per-channel" if options.per_channel else "per-tensor") + " weights"
    if options.bias_correction:
        data, layers = correct_biases(data, job.float_tflite(), job.correction_set)
        note += job.corrected(layers)
    target.write_bytes(data)
    return note


def _tflite_dynamic(job: Job, target: Path) -> str:
    from leukoscreen.convert.exporters import to_tflite
    target.write_bytes(to_tflite(job.source.model, "dynamic", job.calibration_set, job.options.io_type,
                                 job.options.per_channel))
    return "dynamic range: int8 weights, float activations"


def _tflite_fp32(job: Job, target: Path) -> str:
    target.write_bytes(job.float_tflite())
    return "float32 weights"


def _onnx_int8(job: Job, target: Path) -> str:
    """From the bundle's int8 TFLite file when there is one (one quantization, two formats that decide alike);
    otherwise static QDQ from the float ONNX file (dynamic for recurrent networks)."""
    from leukoscreen.convert.bias_correction import correct_onnx_biases, limit_onnx_biases
    from leukoscreen.convert.exporters import make_reproducible, quantize_onnx, tflite_to_onnx
    tflite = job.out / FILE_NAMES["tflite-int8"]
    if tflite.exists() and not job.recurrent:
        tflite_to_onnx(tflite, target)
        return TFLITE_DERIVED
    quantize_onnx(job.float_onnx(), target, job.calibration_set, dynamic=job.recurrent)
    if job.recurrent:  # recurrent networks: dynamic quantization (int8 weights)
        note = "dynamic: int8 weights, activations at run time"
    else:
        note = "static QDQ, per-channel 7-bit weights"
        if job.options.bias_correction:  # it finds layers by the names they have in both files
            note += job.corrected(correct_onnx_biases(target, job.float_onnx(), job.correction_set))
        limit_onnx_biases(target)
    make_reproducible(target)
    return note


def _onnx_fp32(job: Job, target: Path) -> str:
    job.float_onnx()
    return "float32 weights"


EXPORTERS: dict[str, Callable[[Job, Path], str]] = {
    "tflite-int8": _tflite_int8, "tflite-dynamic": _tflite_dynamic, "tflite-fp32": _tflite_fp32,
    "onnx-int8": _onnx_int8, "onnx-fp32": _onnx_fp32}


def _format_metrics(probabilities, reference, part: Part, class_names) -> dict:
    metrics = classification_metrics(part.labels, probabilities, class_names, groups=part.groups, n_boot=200)
    keep = {k: metrics[k] for k in ("accuracy", "macro_f1", "macro_recall", "macro_specificity")}
    keep["ci95"] = {k: metrics["ci95"][k] for k in ("accuracy", "macro_f1")}
    keep["per_class"] = metrics["per_class"]
    if reference is not None:
        ref = classification_metrics(part.labels, reference, class_names, n_boot=0)
        keep["accuracy_change"] = keep["accuracy"] - ref["accuracy"]
        keep["macro_f1_change"] = keep["macro_f1"] - ref["macro_f1"]
        keep["top1_agreement"] = float(np.mean(probabilities.argmax(1) == reference.argmax(1)))
        keep["max_probability_difference"] = float(np.abs(probabilities - reference).max())
    return keep


@dataclass
class Evaluated:
    entry: FormatFile
    metrics: dict
    val_outputs: np.ndarray
    test_outputs: np.ndarray


def _input_spec(runner: ModelRunner) -> TensorSpec:
    if not hasattr(runner, "interpreter"):  # ONNX: float32 pixels as they are
        return TensorSpec(dtype="float32")
    scale, zero_point = runner.input["quantization"]
    return TensorSpec(dtype=np.dtype(runner.input["dtype"]).name, scale=float(scale) or 1.0,
                      zero_point=int(zero_point))


def _evaluate(job: Job, fmt: str, note: str, parts: dict[str, Part], keras_test: np.ndarray) -> Evaluated:
    """The written file through the device's own runtime (which rejects Flex ops): for a two-stage bundle
    with its classifier, fitted on this format's features first."""
    from leukoscreen.convert.exporters import classifier_to_onnx
    target, source = job.out / FILE_NAMES[fmt], job.source
    runner = features = open_runner(target, RuntimeOptions(threads=job.options.threads))
    size, classifier = target.stat().st_size, None
    if source.fit_classifier:
        name = f"classifier-{fmt}.onnx"
        train = parts["train"]
        print(f"      fitting {source.training['classifier']} on the {fmt} features of {len(train.images)} training "
              "images")
        train_features = features.outputs(train.images).reshape(len(train.images), -1)
        classifier_to_onnx(source.fit_classifier(train_features, train.labels), train_features.shape[1],
                           job.out / name)
        runner = TwoStageRunner(features, job.out / name)
        classifier = StoredFile.of(job.out, name)
        size += (job.out / name).stat().st_size
    print(f"[3/5] evaluating {fmt} through {runner.name} on {len(parts['test'].images)} test images")
    test_outputs = runner.predict(parts["test"].images)
    metrics = _format_metrics(test_outputs, keras_test, parts["test"], source.prepared.class_names)
    metrics["size_bytes"] = size
    self_test = runner.predict(job.self_test_fields)
    print(f"      accuracy {metrics['accuracy']:.4f} ({metrics['accuracy_change']:+.4f}), agreement "
          f"{metrics['top1_agreement']:.4f}, size {size / 1e6:.2f} MB; on the self-test's generated fields up to "
          f"{largest_difference(self_test, job.self_test_reference):.3f} from the float model")
    entry = FormatFile.of(job.out, target.name, input=_input_spec(features), quantization=note,
                          outputs="features" if classifier else "probabilities", classifier=classifier,
                          self_test_outputs=np.round(self_test, 6).tolist())
    return Evaluated(entry, metrics, runner.predict(parts["val"].images), test_outputs)


def _parts(source: Source) -> dict[str, Part]:
    prepared = source.prepared
    parts = {}
    for name in ("train", "val", "test"):
        index = prepared.part(name)
        images = preprocessed_images([prepared.paths[i] for i in index], [prepared.sha256s[i] for i in index],
                                     source.preprocess)
        fields = [crop_field(prepared.paths[i]) for i in index] if prepared.dataset.kind == "cells" else None
        parts[name] = Part(images, prepared.labels[index], [prepared.rows[i].group for i in index], fields)
    return parts


def _check_accuracy(evaluated: dict[str, Evaluated], options: ConvertOptions) -> None:
    dropped = [f for f, e in evaluated.items() if "int8" in f and -e.metrics["accuracy_change"] > options.max_accuracy_drop]
    if dropped and not options.allow_drop:
        changes = ", ".join(f"{evaluated[f].metrics['accuracy_change'] * 100:+.2f}" for f in dropped)
        raise ConversionError(
            f"{', '.join(dropped)} lost more than {options.max_accuracy_drop * 100:.1f} points of accuracy against "
            f"the float model ({changes} points); no manifest was written. Use more --representative images, or "
            "--allow-accuracy-drop to accept it")


def _manifest(job: Job, run_path: Path, evaluated: dict[str, Evaluated], parts: dict[str, Part],
              keras_metrics: dict) -> Manifest:
    """Calibration and decision rule on the validation part (default format), and the manifest."""
    from leukoscreen.convert.calibration import decision_parameters
    source, options = job.source, job.options
    classes, primary = source.prepared.class_names, next(iter(evaluated))
    print(f"[4/5] calibration and threshold on {len(parts['val'].images)} validation images ({primary})")
    negative = options.negative_classes or default_negative_classes(classes)
    calibration, rule = decision_parameters(evaluated[primary].val_outputs, parts["val"].labels, classes, negative,
                                            options.target_sensitivity, parts["val"].fields)
    print(f"      threshold {rule.threshold:.3f}: {rule.threshold_rule}")
    metrics = {REFERENCE_METRICS: keras_metrics} | {fmt: e.metrics for fmt, e in evaluated.items()}
    outcomes = screening_outcomes(evaluated[primary].test_outputs, parts["test"].labels, classes, calibration, rule,
                                  parts["test"].fields)
    metrics[primary] = metrics[primary] | {"screening": outcomes}
    print(f"      on the test split: {describe_outcomes(outcomes)}")
    cells = source.prepared.dataset.kind == "cells"
    geometry, um_per_px = read_cell_geometry(source.prepared.dataset.root) if cells else (None, None)
    field_px = None
    if not cells:
        um_per_px, field_px = training_field_scale([source.prepared.paths[i] for i in source.prepared.part("train")])
        print(f"      training scale: {um_per_px} um per pixel, field {field_px} px" if field_px else
              "      training scale: not recorded (the training images show too few red cells, or differ in size)")
    return Manifest(
        name=options.name or run_path.name, version=options.version, task=source.prepared.task, class_names=classes,
        default_format=primary, input=InputSpec(size=source.preprocess.input_size),
        input_kind="cell" if cells else "field", cell=geometry, um_per_px=um_per_px, field_px=field_px,
        preprocess=source.preprocess, output="sigmoid" if len(classes) == 2 and not source.fit_classifier else "softmax",
        calibration=calibration, decision=rule, files={fmt: e.entry for fmt, e in evaluated.items()},
        metrics={name: FormatMetrics.model_validate(m) for name, m in metrics.items()},
        representative_images=len(job.calibration_set), self_test=job.self_test(),
        training=TrainingRecord(**source.training, split_file="split.csv", metrics_on="test split"),
        software_version=__version__, created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        intended_use=INTENDED_USE)


def convert_run(run_path: Path, out: Path, formats: list[str], **options) -> Manifest:
    """Convert a trained run, or a Model 1 run (`leukoscreen classical`: a two-stage bundle of the backbone's
    feature extractor and the chosen classifier). `options`: the fields of ConvertOptions."""
    options = ConvertOptions(**options)
    options.check(formats)
    run_path = Path(run_path)
    print(f"[1/5] loading {run_path} and its split")
    source = load_source(run_path, options.classifier)
    parts = _parts(source)
    train = parts["train"].images
    calibration_set = train[np.random.default_rng(source.seed).permutation(len(train))[:options.representative]]
    keras_test = source.reference(parts["test"].images)
    keras_metrics = _format_metrics(keras_test, None, parts["test"], source.prepared.class_names)
    out.mkdir(parents=True, exist_ok=True)
    job = Job(source, out, options, calibration_set)
    evaluated = {}
    for step, fmt in enumerate(formats, 1):
        print(f"[2/5] ({step}/{len(formats)}) writing {fmt}: {FILE_NAMES[fmt]}")
        note = EXPORTERS[fmt](job, out / FILE_NAMES[fmt])
        evaluated[fmt] = _evaluate(job, fmt, note, parts, keras_test)
    if "onnx-fp32" not in formats:
        (out / FILE_NAMES["onnx-fp32"]).unlink(missing_ok=True)  # only an intermediate here
    manifest = _manifest(job, run_path, evaluated, parts, keras_metrics)
    _check_accuracy(evaluated, options)
    # the split travels with the bundle (files by sha256, paths relative to the data folder)
    data = str(source.prepared.dataset.root)
    save_split(out / "split.csv", [replace(row, path=os.path.relpath(row.path, data))
                                   for row in load_split(source.split_file)])
    write_manifest(out, manifest)
    print("[5/5] the unfamiliar-image guard (statistics: training part; threshold: validation part)")
    from leukoscreen.convert.guard_builder import add_guard
    try:
        manifest = add_guard(out, Path(data))
    except ConversionError as error:  # an architecture without (features) -> dense -> softmax
        print(f"warning: {error}; the device will answer on any field that passes the quality gate")
    print(f"bundle: {out} (default format {manifest.default_format})")
    return manifest


def training_field_scale(paths: list[str]) -> tuple[float | None, int | None]:
    """A field bundle's training scale: the median red-cell estimate of its training images' pixel size
    (`leukoscreen scale`) and the side of their central square; (None, None) when fewer than 95% of them share
    one side (the model's field has no one size) or they show too few red cells."""
    from collections import Counter

    from leukoscreen.training.cell_data import SCALE_SAMPLE, source_scale
    sides = []
    for path in paths[::max(1, len(paths) // SCALE_SAMPLE)]:
        try:
            sides.append(min(read_image(path).shape[:2]))
        except ImageReadError:
            continue
    if not sides:
        return None, None
    side, count = Counter(sides).most_common(1)[0]
    if count < 0.95 * len(sides):
        return None, None
    try:
        um_per_px, _ = source_scale(Path(paths[0]).parent, paths)
    except ValueError:
        return None, None
    return round(um_per_px, 4), int(side)


def record_field_scale(bundle_path: Path, data: Path, version: str | None = None) -> Manifest:
    """`leukoscreen bundle scale`: a field bundle's training scale (`training_field_scale` on the training part of
    its split, images under `data`) written into its manifest, so a device with a configured pixel size reads its
    frames at that scale (edge/field_tiles.py)."""
    from leukoscreen.edge.bundle import load_bundle, write_manifest
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    if manifest.input_kind != "field":
        raise ConversionError(f"{bundle.path}: a cell bundle cuts its crops at each field's pixel size already")
    rows = split_rows(bundle, Path(data), "train")
    um_per_px, field_px = training_field_scale([str(Path(data) / r.path) for r in rows])
    if field_px is None:
        raise ConversionError(f"{data}: its training images differ in size or show too few red cells: no one field "
                              "scale to record")
    updated = manifest.model_copy(update={"um_per_px": um_per_px, "field_px": field_px,
                                          "version": version or manifest.version})
    try:
        updated = Manifest.model_validate(updated.model_dump())
    except ValidationError as error:
        raise ConversionError(f"the bundle was left as it was: {describe(error)}") from None
    if write_manifest(bundle.path, updated):
        print("note: its signature was of the old manifest and was removed: sign it again (`leukoscreen sign`)")
    print(f"{bundle.path}: training scale {um_per_px} um per pixel, field {field_px} px; version {updated.version}")
    return updated


def split_rows(bundle, data: Path, name: str) -> list:
    """The rows of one part ("train", "val", "test") of a bundle's split.csv, every image there under `data` (the
    folder the bundle was trained on) and checked by sha256."""
    import hashlib
    split = bundle.path / bundle.manifest.training.split_file
    if not split.is_file():
        raise ConversionError(f"{bundle.path} has no {split.name} (the split it was trained on): convert the run "
                              "again, which writes it")
    rows = [r for r in load_split(split) if r.part == name]
    if not rows:
        raise ConversionError(f"{split} has no {name} rows: this needs the bundle's own split")
    changed = [r.path for r in rows
               if not (data / r.path).is_file() or hashlib.sha256((data / r.path).read_bytes()).hexdigest() != r.sha256]
    if changed:
        raise ConversionError(f"{len(changed)} of the {len(rows)} {name} images of {bundle.path}'s split are missing "
                              f"under {data} or differ from it (first: {changed[0]}); pass the data folder the bundle "
                              "was trained on")
    return rows


def bundle_part(bundle, data: Path, name: str) -> Part:
    """One part ("train", "val", "test") of a bundle's split.csv, its images read under `data` and checked by
    sha256 (`split_rows`), preprocessed as the device does; groups: the split rows."""
    manifest, data = bundle.manifest, Path(data)
    rows = split_rows(bundle, data, name)
    classes = manifest.class_names
    return Part(preprocessed_images([str(data / r.path) for r in rows], [r.sha256 for r in rows], manifest.preprocess),
                np.array([classes.index(r.label) for r in rows]), [r.group for r in rows],
                [crop_field(r.path) for r in rows] if manifest.input_kind == "cell" else None)


def remake_onnx_int8(bundle_path: Path, data: Path, version: str | None = None) -> Manifest:
    """`leukoscreen bundle onnx-from-tflite`: an existing bundle's onnx-int8 file made (again) from its tflite-int8
    file, for bundles converted when onnx-int8 was quantized on its own. Both files are run through the device
    runtimes on the bundle's test part (its split.csv, images under `data`, checked by sha256); the new file is
    kept only when every test image gets the same decision from both, and its figures go into the manifest
    (accuracy changes against the float model's stored figures; agreement is against tflite-int8, printed, as
    the float model is not in a bundle)."""
    from leukoscreen.convert.exporters import tflite_to_onnx
    from leukoscreen.edge.bundle import load_bundle
    bundle = load_bundle(bundle_path)
    manifest, data = bundle.manifest, Path(data)
    if "tflite-int8" not in manifest.files or manifest.files["tflite-int8"].classifier:
        raise ConversionError(f"{bundle.path}: needs a tflite-int8 file of class probabilities (two-stage bundles: "
                              "convert the run again)")
    part, classes = bundle_part(bundle, data, "test"), manifest.class_names
    target = bundle.path / FILE_NAMES["onnx-int8"]
    new = target.with_name("model-int8.new.onnx")
    try:
        tflite_to_onnx(bundle.file("tflite-int8"), new)
        reference = bundle.runner(RuntimeOptions(format="tflite-int8")).predict(part.images)
        runner = open_runner(new, RuntimeOptions())
        outputs = runner.predict(part.images)
        rule, calibration = manifest.decision, manifest.calibration
        answers = [[rule.decide(s).code for s in rule.score(calibration.apply(p), classes)] for p in (reference, outputs)]
        differing = sum(a != b for a, b in zip(*answers))
        print(f"onnx-int8 against tflite-int8 on {len(part.labels)} test images: top-1 agreement "
              f"{np.mean(outputs.argmax(1) == reference.argmax(1)):.4f}, largest probability difference "
              f"{np.abs(outputs - reference).max():.4f}, decisions differing {differing}")
        if differing:
            raise ConversionError(f"the new onnx-int8 file decides {differing} test images otherwise than tflite-int8; "
                                  "the bundle was left as it was")
        metrics = _format_metrics(outputs, None, part, classes) | {"size_bytes": new.stat().st_size}
        float_metrics = manifest.metrics.get(REFERENCE_METRICS)
        if float_metrics:
            metrics |= {"accuracy_change": metrics["accuracy"] - float_metrics.accuracy,
                        "macro_f1_change": metrics["macro_f1"] - float_metrics.macro_f1}
        test = manifest.self_test
        self_test = runner.predict(generated_fields(manifest.input.size, test.fields)) if test else None
        entry = FormatFile.of(bundle.path, new.name, input=TensorSpec(dtype="float32"), quantization=TFLITE_DERIVED,
                              outputs="probabilities", guard_outputs=manifest.files["tflite-int8"].guard_outputs,
                              self_test_outputs=None if self_test is None else np.round(self_test, 6).tolist())
        values = manifest.model_dump() | {"version": version or manifest.version}
        values["files"] = values["files"] | {"onnx-int8": entry.model_dump() | {"file": target.name}}
        values["metrics"] = values["metrics"] | {"onnx-int8": metrics}
        try:  # the whole new manifest is valid before anything in the bundle changes
            manifest = Manifest.model_validate(values)
        except ValidationError as error:
            raise ConversionError(f"the bundle was left as it was: {describe(error)}") from None
        os.replace(new, target)
    finally:
        new.unlink(missing_ok=True)
    if write_manifest(bundle.path, manifest):
        print("note: its signature was of the old manifest and was removed: sign it again (`leukoscreen sign`)")
    print(f"{target}: remade from {bundle.file('tflite-int8').name}; accuracy {metrics['accuracy']:.4f}, bundle "
          f"version {manifest.version}")
    return manifest
