"""The bundle manifest (`manifest.json`): the one typed definition of the contract between the desktop and
the device, used by `leukoscreen convert` to write it and by the device to read it.

Every part is a pydantic model that refuses unknown keys; the field descriptions are the schema's
documentation (`leukoscreen bundle schema` prints the JSON Schema, kept in `edge/manifest.schema.json`).
`schema_version` goes up whenever the meaning of a field changes. Older manifests are read with a note and
`leukoscreen bundle upgrade` rewrites them: schema 1 (before the files entries said what a model file
outputs), schema 2 (before the self-test; such a bundle has none until it is converted again).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer, model_validator

from leukoscreen.edge.cell_crops import CellGeometry
from leukoscreen.edge.decision import DecisionRule, calibrate
from leukoscreen.edge.guard import class_distances, class_mean_probabilities, energy, mahalanobis
from leukoscreen.edge.preprocessing import PreprocessConfig
from leukoscreen.edge.validation import describe

SCHEMA_VERSION = 3
INTENDED_USE = "Research use only. Not for use in diagnostic procedures."
PRINTABLE = r"^[^\x00-\x1f\x7f]{1,80}$"
Format = Literal["tflite-int8", "tflite-dynamic", "tflite-fp32", "onnx-int8", "onnx-fp32"]
FORMATS = get_args(Format)
REFERENCE_METRICS = "keras-fp32"
LATER_PARTS = ("field_px", "adaptation")   # optional parts added within schema 3  # the float model on the desktop, beside the formats


class BundleError(ValueError):
    """A bundle the device must not use; the message says what is wrong and what to do."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class StoredFile(Part):
    file: str = Field(description="a plain file name inside the bundle folder")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="sha256 of the file; the device refuses a mismatch")

    @field_validator("file")
    @classmethod
    def _plain_name(cls, name: str) -> str:
        if not name or Path(name).name != name:
            raise ValueError(f"file {name!r} must be a plain file name inside the bundle")
        return name

    @classmethod
    def of(cls, folder: Path, name: str, **values) -> "StoredFile":
        """The entry for a file written into the bundle folder, with its hash."""
        return cls(file=name, sha256=sha256_of(folder / name), **values)


class TensorSpec(Part):
    dtype: Literal["int8", "uint8", "float32"] = Field(description="type of the model file's input tensor")
    scale: float = Field(1.0, gt=0, description="quantization scale: pixel value = (stored - zero_point) * scale")
    zero_point: int = Field(0, ge=-128, le=255, description="quantization zero point")


class FormatFile(StoredFile):
    """One model format of the bundle."""
    input: TensorSpec = Field(description="the file's input tensor (it reads uint8 RGB pixels after "
                                          "preprocessing, in this type)")
    outputs: Literal["probabilities", "features"] = Field(
        description="probabilities: class probabilities (one sigmoid column or a softmax row); features: a "
                    "feature vector that `classifier` turns into probabilities (thesis Model 1)")
    classifier: StoredFile | None = Field(None, description="the ONNX classifier (skl2onnx) fitted on this "
                                                            "format's features; only with outputs = features")
    quantization: str = Field(description="how the weights and activations are stored, in words")
    guard_outputs: bool = Field(False, description="the file also outputs the penultimate features (output 2) and "
                                                   "the logits (output 3) that the unfamiliar-image guard reads; a "
                                                   "two-stage file's features are its feature model's output")
    self_test_outputs: list[list[float]] | None = Field(
        None, description="this file's class probabilities on the self-test's generated fields, as the converter's "
                          "device runtime computed them; the device refuses the file when its own differ by more "
                          "than self_test.tolerance")

    @model_validator(mode="after")
    def _classifier_matches_outputs(self) -> "FormatFile":
        if self.input.dtype == "float32" and (self.input.scale, self.input.zero_point) != (1.0, 0):
            raise ValueError(f"files entry {self.file}: a float32 input has scale 1 and zero point 0")
        if (self.outputs == "features") != (self.classifier is not None):
            raise ValueError(f"files entry {self.file}: outputs = {self.outputs!r} needs "
                             + ("a classifier" if self.outputs == "features" else "no classifier"))
        if self.classifier is not None and not self.classifier.file.endswith(".onnx"):
            raise ValueError(f"classifier {self.classifier.file!r} must be an .onnx file (a skl2onnx classifier)")
        return self


class InputSpec(Part):
    size: int = Field(ge=8, description="side of the square model input in pixels; the device checks the model "
                                        "file against it")
    channels: Literal[3] = Field(3, description="RGB")
    layout: Literal["NHWC"] = Field("NHWC", description="images, rows, columns, channels")


class Calibration(Part):
    temperature: float = Field(gt=0.01, le=100, description="temperature scaling: softmax(log(p) / T)")
    fitted_on: str = Field("validation split", description="the images the temperature was fitted on")

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return calibrate(probabilities, self.temperature)


GuardMethod = Literal["mahalanobis", "energy"]


def without_formats(values: dict, formats, fallback: str) -> dict:
    """A manifest's values with these formats left out (their files and metrics); the default becomes
    `fallback` when it is one of them."""
    files = {name: entry for name, entry in values["files"].items() if name not in formats}
    metrics = {name: table for name, table in values.get("metrics", {}).items() if name not in formats}
    default = fallback if values["default_format"] in formats else values["default_format"]
    return values | {"files": files, "metrics": metrics, "default_format": default}


def guard_scores_agree(method: str, scores, expected) -> bool:
    """Whether guard scores agree with the expected ones: Mahalanobis within a factor of 2, energy within 1 or
    half the value."""
    scores, expected = np.asarray(scores, np.float64), np.asarray(expected, np.float64)
    if len(scores) != len(expected):
        return False
    if method == "mahalanobis":
        return bool(np.all((scores >= expected / 2) & (scores <= expected * 2)))
    return bool(np.all(np.abs(scores - expected) <= np.maximum(1.0, np.abs(expected) / 2)))


class Guard(Part):
    """The unfamiliar-image guard (edge/guard.py): a score of how far an image (a field, or each cell of a cell
    bundle) is from the training images, from the model file's own features or logits; above the threshold
    the image is not screened."""
    method: GuardMethod = Field(description="mahalanobis: distance of the penultimate features from the nearest "
                                            "class mean; energy: -log-sum-exp of the logits")
    statistics: StoredFile | None = Field(None, description="mahalanobis: the training features' mean, whitening "
                                                            "projection and class means (.npz, no pickles)")
    components: int | None = Field(None, ge=1, description="mahalanobis: principal components kept")
    threshold: float = Field(description="scores above it are 'Not screened: unlike the images this model was made "
                                         "for'")
    threshold_rule: str = Field(description="how the threshold was chosen, in words")
    features_from: Format = Field(description="the format whose features the statistics and threshold were fitted "
                                              "on (the other formats compute the same network; the self-test's "
                                              "guard scores check that they agree); a bundle may since have dropped it")
    fitted_on: str = Field(description="the images the statistics were fitted on, and those of the threshold")
    separation: dict[str, dict[str, float]] = Field(default_factory=dict, description=(
        "area under the ROC curve of each method's score, test part against each unfamiliar set, measured when "
        "the guard was fitted (1: separated, 0.5: not at all)"))
    familiar_test_share: float = Field(ge=0, le=1, description="share of the test part's images the guard passes (adapted "
                                                               "bundles: of the held-out local images)")
    self_test_scores: list[float] | None = Field(None, description=(
        "the guard's scores on the self-test's generated fields, as the converter computed them (features_from); "
        "a device whose scores are not within a factor of 2 (energy: 1 or half the value) refuses the file"))

    @model_validator(mode="after")
    def _statistics_match_method(self) -> "Guard":
        if (self.method == "mahalanobis") != (self.statistics is not None):
            raise ValueError("guard: the mahalanobis method needs its statistics file, and only it has one")
        if self.method == "mahalanobis" and not 0 < self.threshold <= 1e12:
            raise ValueError(f"guard: a Mahalanobis threshold is a squared distance above 0 (and at most 1e12), got "
                             f"{self.threshold}")
        if self.method == "mahalanobis" and self.components is None:
            raise ValueError("guard: the mahalanobis method records its components")
        return self

    def agrees(self, scores: np.ndarray) -> bool:
        """Whether a device's guard scores on the self-test fields agree with the converter's."""
        return self.self_test_scores is None or guard_scores_agree(self.method, scores, self.self_test_scores)

    def score(self, extra: list[np.ndarray], statistics: dict[str, np.ndarray] | None) -> np.ndarray:
        """Each image's score from the model file's further outputs (`ModelRunner.predict_all`)."""
        if self.method == "mahalanobis":
            return mahalanobis(extra[0] if extra else None, statistics)
        if len(extra) < 2:
            raise ValueError("the model file does not output the logits the energy guard reads")
        return energy(extra[1])


class Adaptation(Part):
    """What `leukoscreen adapt` refitted on a site's own labelled images (convert/adapt.py), the backbone kept: the
    class means of the guard's statistics (the head: Gaussian classes sharing the training covariance, equal
    priors), the temperature, the decision threshold and the guard's threshold."""
    head: Literal["class means"] = Field(description="class means: the probabilities are softmax(-d / 2) of the "
                                                     "squared whitened distances d of the features from each class "
                                                     "mean of the guard's statistics; the model file's own "
                                                     "probabilities are only self-tested")
    adapted_on: str = Field(pattern=PRINTABLE, description="the local images, in words")
    images: dict[str, int] = Field(description="local images per class the head was fitted on")
    held_out: int = Field(ge=0, description="local images kept out of the fit to measure it")
    prior_weight: float = Field(ge=0, le=1000, description="each class mean is the local images' mean shrunk towards "
                                                            "the original's as if that were this many images")
    adapted_from: str = Field(pattern=PRINTABLE, description="the name and version of the bundle it was adapted from")
    self_test_probabilities: list[list[float]] | None = Field(None, description=(
        "the head's probabilities (before the temperature) on the self-test's generated fields, as `adapt` computed "
        "them; a device whose head gives others beyond the self-test's tolerance refuses the file (class means that "
        "do not belong to the head, or in another order)"))
    before: dict[str, float | None] = Field(default_factory=dict, description="the held-out local images through the "
                                                                              "whole device pipeline, before")
    after: dict[str, float | None] = Field(default_factory=dict, description="the same images, after")

    def probabilities(self, extra: list[np.ndarray], statistics: dict[str, np.ndarray]) -> np.ndarray:
        """Each image's class probabilities from the model file's features (`ModelRunner.predict_all`)."""
        return class_mean_probabilities(class_distances(extra[0] if extra else None, statistics))


class AnswerCounts(Part):
    n: int = Field(ge=0, description="images")
    no_blasts: int = Field(ge=0, description="answered 'No blasts suggested'")
    indeterminate: int = Field(ge=0, description="answered 'Indeterminate: retake or review'")
    possible_blasts: int = Field(ge=0, description="answered 'Possible blasts: refer for haematologist review'")


class ScreeningOutcomes(Part):
    """The bundle's three answers on labelled images (the model and decision rule; no quality gate)."""
    blast: AnswerCounts = Field(description="the images of blast classes")
    non_blast: AnswerCounts = Field(description="the images of the negative classes")
    sensitivity: Share = Field(description="blast images not answered 'no blasts' (referred or indeterminate)")
    specificity: Share = Field(description="non-blast images answered 'no blasts'")
    indeterminate_share: Share = Field(description="share of all images answered 'Indeterminate'")


Share = Annotated[float, Field(ge=0, le=1)]
Change = Annotated[float, Field(ge=-1, le=1)]


class ClassMetrics(Part):
    precision: Share = Field(description="of the images given this class, the share that have it")
    recall: Share = Field(description="of the images of this class, the share given it (sensitivity)")
    specificity: Share = Field(description="of the images of other classes, the share not given it")
    f1: Share = Field(description="harmonic mean of precision and recall")
    support: int = Field(ge=0, description="test images of this class")


class FormatMetrics(Part):
    """Test-split figures of one format (or of the desktop float model, `keras-fp32`)."""
    accuracy: Share = Field(description="share of test images given their class")
    macro_f1: Share = Field(description="F1 averaged over the classes")
    macro_recall: Share = Field(description="recall (sensitivity) averaged over the classes")
    macro_specificity: Share = Field(description="specificity averaged over the classes")
    ci95: dict[str, tuple[Share, Share]] = Field(description="95% intervals resampling whole groups")
    per_class: dict[str, ClassMetrics] = Field(description="by class name")
    accuracy_change: Change | None = Field(None, description="against the float model")
    macro_f1_change: Change | None = Field(None, description="against the float model")
    top1_agreement: Share | None = Field(None, description="share of test images given the float model's class")
    max_probability_difference: Share | None = Field(None, description="largest difference of a class "
                                                                          "probability from the float model's")
    size_bytes: int | None = Field(None, ge=0, description="model file plus classifier")
    screening: ScreeningOutcomes | None = Field(None, description="the decision rule's answers (default format)")


class TrainingRecord(Part):
    model: str = Field(description="the network (e.g. efficientnet-lite0), or the Model 1 pair")
    data: str = Field(description="the training data folder's name")
    task: str = Field(description="subtype, binary, classes")
    split_method: str = Field(description="how the training, validation and test parts were drawn")
    run: str = Field(description="the run folder the bundle was converted from")
    trained_precision: str = Field("float32", description="float32 or mixed_bfloat16 (the saved model is float32)")
    split_file: str = Field("split.csv", description="the split, in the bundle: files by sha256")
    metrics_on: str = Field("test split", description="the images the metrics were measured on")
    backbone: str | None = Field(None, description="Model 1: the feature extractor")
    weights: str | None = Field(None, description="Model 1: imagenet, none (random) or the weights file")
    classifier: str | None = Field(None, description="Model 1: the classical classifier after the features")
    classifier_fitted_on: str | None = Field(None, description="Model 1: the features the classifier was fitted on")


class SelfTest(Part):
    """Generated fields every model file of the bundle is run on before it decides anything (edge/self_test.py)."""
    generator: str = Field(description="how the fields are made; the device makes the same ones")
    fields: int = Field(ge=1, le=64, description="how many generated fields (the converter makes 6)")
    fields_sha256: str = Field(pattern="^[0-9a-f]{64}$", description="sha256 of the fields' pixels, so a device "
                                                                      "that generated other bytes says so")
    reference: list[list[float]] = Field(description="the float (desktop) model's class probabilities on them")
    tolerance: float = Field(gt=0, le=1, description="largest difference of a class probability from the "
                                                     "converter's answer that a device accepts")


class Manifest(Part):
    schema_version: Literal[3] = Field(SCHEMA_VERSION, description="the version of this schema; the device refuses "
                                                                     "versions it does not know")
    name: str = Field(pattern=PRINTABLE, description="the bundle's name, shown with every result (1-80 "
                                                     "characters, no control characters)")
    version: str = Field(pattern=PRINTABLE, description="the bundle's version, shown with every result (1-80 "
                                                        "characters, no control characters)")
    task: str = Field(description="subtype (Benign/Early/Pre/Pro), binary (benign/malignant), or the folders' classes")
    class_names: list[str] = Field(min_length=2, description="the model's output classes, in output order")
    default_format: Format = Field(description="the format the device uses unless configured otherwise")
    input: InputSpec = Field(description="the model input the files read")
    input_kind: Literal["field", "cell"] = Field(description="field: the model reads the whole field; cell: it "
                                                             "reads each white cell's crop")
    cell: CellGeometry | None = Field(None, description="cell bundles: how each white cell's crop is cut from the "
                                                        "field (edge/cell_crops.py); none for field bundles")
    um_per_px: float | None = Field(None, gt=0, le=10, description=(
        "pixel size of the training images in microns per pixel (per source, the median of `leukoscreen scale`); "
        "cell bundles: crops are cut at the field's own pixel size, so this only documents the training data; "
        "none: not recorded (bundles made before it was)"))
    field_px: int | None = Field(None, ge=8, le=8192, description=(
        "field bundles: side in pixels of the training images' central square, at um_per_px; with both, a frame "
        "of a configured pixel size is resampled to um_per_px and read in tiles of this side (edge/field_tiles.py); "
        "none: every frame is read whole, as captured"))
    preprocess: PreprocessConfig = Field(description="how a field (or cell crop) becomes the model input "
                                                     "(edge/preprocessing.py)")
    output: Literal["sigmoid", "softmax"] = Field(description="sigmoid: one column, P(class_names[1]); "
                                                              "softmax: one probability per class")
    calibration: Calibration = Field(description="how raw probabilities are calibrated before the decision")
    decision: DecisionRule = Field(description="how the calibrated blast score becomes an answer")
    files: dict[Format, FormatFile] = Field(min_length=1, description="the model file of each format")
    metrics: dict[str, FormatMetrics] = Field(description="keras-fp32 and each format, on the test split")
    representative_images: int = Field(0, ge=0, le=1_000_000, description="training images that calibrated int8 "
                                                                          "quantization")
    self_test: SelfTest | None = Field(None, description="none only in bundles converted before the self-test "
                                                         "existed (schema 1 and 2)")
    guard: Guard | None = Field(None, description="the unfamiliar-image guard; none in bundles made before it (`leukoscreen "
                                                  "bundle guard` adds one)")
    adaptation: Adaptation | None = Field(None, description="a bundle refitted on a site's own images (`leukoscreen "
                                                            "adapt`): its head reads the guard's class means; its "
                                                            "`metrics` stay those of the original head")
    training: TrainingRecord = Field(description="what the model was trained on, and how")
    software_version: str = Field(description="the leukoscreen version that wrote the bundle")
    created: str = Field(description="when the bundle was written (ISO time, UTC)")
    intended_use: Literal["Research use only. Not for use in diagnostic procedures."] = Field(
        description="the only use a bundle may have")
    manifest_sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$", description=(
        "sha256 of this manifest without this key (canonical JSON: keys sorted, no spaces), written with it: the "
        "device refuses a manifest changed afterwards (a hand edit of a class order, temperature or threshold "
        "would change every answer without any file hash noticing); none only in schema 1 and 2"))

    @model_serializer(mode="wrap")
    def _without_absent_later_parts(self, handler):
        """Parts added after schema 3 are left out when absent, so the digest of a manifest written (or signed)
        before they existed stays what it was."""
        values = handler(self)
        for key in LATER_PARTS:
            if isinstance(values, dict) and key in values and values[key] is None:
                del values[key]
        return values

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names {self.class_names} name a class twice")
        if self.preprocess.colour == "reinhard" and (len(self.preprocess.reference) != 6
                                                     or min(self.preprocess.reference[3:]) <= 0):
            raise ValueError("preprocess.colour = 'reinhard' needs preprocess.reference: the L*, a*, b* means then "
                             "their (positive) standard deviations of the training images")
        if self.field_px is not None and (self.input_kind != "field" or self.um_per_px is None):
            raise ValueError("field_px: only a field bundle has one, and only with its um_per_px")
        if (self.input_kind == "cell") != (self.cell is not None):
            raise ValueError("input_kind = 'cell' needs the cell crop geometry (`cell`), and only a cell bundle has one"
                             if self.input_kind == "cell" else "a field bundle has no `cell` crop geometry")
        negative = self.decision.negative_classes
        if len(set(negative)) != len(negative) or set(negative) >= set(self.class_names):
            raise ValueError(f"decision.negative_classes {negative}: each class once, and not every class (the "
                             "blast score is the probability of the other classes)")
        for fmt, entry in self.files.items():
            if Path(entry.file).suffix != (".onnx" if fmt.startswith("onnx") else ".tflite"):
                raise ValueError(f"files.{fmt}.file {entry.file!r} is not a {fmt.split('-')[0]} file")
        if self.default_format not in self.files:
            raise ValueError(f"default_format {self.default_format!r} is not among the files "
                             f"({', '.join(self.files)})")
        unknown = sorted(set(self.decision.negative_classes) - set(self.class_names))
        if unknown:
            raise ValueError(f"decision.negative_classes {unknown} are not class names ({self.class_names})")
        if self.preprocess.input_size != self.input.size:
            raise ValueError(f"preprocess.input_size = {self.preprocess.input_size} but input.size = "
                             f"{self.input.size}")
        if self.output == "sigmoid" and len(self.class_names) != 2:
            raise ValueError(f"output 'sigmoid' needs two classes, got {len(self.class_names)}")
        unknown = sorted(set(self.metrics) - {REFERENCE_METRICS, *self.files})
        if unknown:
            raise ValueError(f"metrics for {unknown}: not a format of this bundle")
        if self.self_test:
            missing = [fmt for fmt, entry in self.files.items() if entry.self_test_outputs is None]
            if missing:
                raise ValueError(f"files {missing} have no self_test_outputs although the bundle has a self_test")
            shape = (self.self_test.fields, len(self.class_names))
            tables = {"self_test.reference": self.self_test.reference} | {
                f"files.{fmt}.self_test_outputs": entry.self_test_outputs for fmt, entry in self.files.items()}
            for where, table in tables.items():
                if (len(table), *{len(row) for row in table}) != shape:
                    raise ValueError(f"{where} is not {shape[0]} rows of {shape[1]} class probabilities (one row per "
                                     "self-test field)")
        if self.adaptation and (self.guard is None or self.guard.method != "mahalanobis"
                                or set(self.adaptation.images) != set(self.class_names)):
            raise ValueError("adaptation: the class-means head needs the mahalanobis guard's statistics and local "
                             "images of every class")
        if self.guard:
            missing = [fmt for fmt, entry in self.files.items() if not (entry.guard_outputs or entry.classifier)]
            if missing:
                raise ValueError(f"files {missing} do not output the features the guard reads")
            if self.guard.method == "energy" and any(entry.classifier for entry in self.files.values()):
                raise ValueError("guard: a two-stage bundle has no logits; use the mahalanobis method")
            if self.self_test and self.guard.self_test_scores is not None and len(
                    self.guard.self_test_scores) != self.self_test.fields:
                raise ValueError("guard.self_test_scores is not one score per self-test field")
        return self

    @property
    def title(self) -> str:
        return f"{self.name} {self.version}"


def _from_schema_1(values: dict) -> dict:
    """A schema-1 manifest as schema 2: files entries say what the model outputs and carry their input
    tensor and quantization; the decision stores its threshold once (the indeterminate band's lower end,
    which schema 1's device compared with); `input.per_format`, `input.pixels` and `quantization` go."""
    values = dict(values)
    given_input = dict(values.get("input") or {})
    per_format = given_input.pop("per_format", {}) or {}
    given_input.pop("pixels", None)
    quantization = dict(values.pop("quantization", None) or {})
    files = {}
    for fmt, entry in (values.get("files") or {}).items():
        entry = dict(entry) if isinstance(entry, dict) else entry
        if isinstance(entry, dict):
            entry.setdefault("input", per_format.get(fmt, {"dtype": "float32"}))
            entry.setdefault("outputs", "features" if "classifier" in entry else "probabilities")
            entry.setdefault("quantization", quantization.get(fmt, "float32 weights" if "fp32" in fmt else
                                                              "dynamic range: int8 weights"))
        files[fmt] = entry
    decision = dict(values.get("decision") or {})
    band = decision.pop("indeterminate_band", None)
    if not (isinstance(band, list) and len(band) == 2 and all(isinstance(v, (int, float)) for v in band)
            and band[0] <= decision.get("threshold", band[0]) <= band[1]):
        raise ValueError(f"decision.indeterminate_band {band!r} is not two numbers around the threshold")
    decision["threshold"], decision["refer_at"] = band
    values.update(schema_version=SCHEMA_VERSION, input=given_input, files=files, decision=decision,
                  representative_images=quantization.get("representative_images", 0))
    return values


def manifest_digest(values: dict) -> str:
    """sha256 of a manifest's JSON values without `manifest_sha256`, in canonical form."""
    rest = {key: value for key, value in values.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=False
                                     ).encode()).hexdigest()


def manifest_json(manifest: Manifest) -> str:
    """The manifest as written into a bundle: its values and their digest."""
    values = json.loads(manifest.model_dump_json(exclude={"manifest_sha256"}))
    return json.dumps(values | {"manifest_sha256": manifest_digest(values)}, indent=2, ensure_ascii=False) + "\n"


def parse_manifest(values, where: str = "manifest.json") -> tuple[Manifest, tuple[str, ...]]:
    """Validate manifest JSON (a dict) into a Manifest, and notes for the user (a migrated schema).
    Raises BundleError naming the first problem."""
    if not isinstance(values, dict):
        raise BundleError(f"{where}: not a JSON object")
    version, notes = values.get("schema_version"), ()
    if isinstance(version, bool):  # JSON true is not version 1
        version = str(version).lower()
    if version in (1, 2):
        try:
            values = _from_schema_1(values) if version == 1 else values | {"schema_version": SCHEMA_VERSION}
        except (AttributeError, TypeError, ValueError) as error:
            raise BundleError(f"{where}: a schema-1 manifest of an unexpected shape ({error}); convert the model "
                              "again with `leukoscreen convert RUN --out BUNDLE`") from error
        notes = (f"{where} is schema {version} and was read as schema {SCHEMA_VERSION}, without a self-test; "
                 "`leukoscreen bundle upgrade BUNDLE` rewrites it, `leukoscreen convert` again adds the self-test",)
    elif version == SCHEMA_VERSION:
        recorded = values.get("manifest_sha256")
        if not isinstance(recorded, str) or recorded != manifest_digest(values):
            raise BundleError(f"{where}: " + ("has no manifest_sha256" if recorded is None else
                                              "was changed after it was written (its manifest_sha256 does not match)")
                              + ": an edited manifest can change every answer (class order, temperature, "
                              "threshold), so it is refused; convert the model again with `leukoscreen convert`")
        values = {key: value for key, value in values.items() if key != "manifest_sha256"}  # of the file, not
        # of its content: a Manifest read from a file equals the one it was written from
    else:
        raise BundleError(f"{where}: schema_version {version!r} is not supported (this software reads versions 1 "
                          f"to {SCHEMA_VERSION}); convert the model again with `leukoscreen convert RUN --out "
                          "BUNDLE`, or update the device's software")
    try:  # strictly: `leukoscreen convert` writes every value in its type, so a number written as text means
        # the manifest was not written by it (JSON arrays stand for tuples)
        return Manifest.model_validate_json(json.dumps(values), strict=True), notes
    except (ValidationError, ValueError, RecursionError) as error:
        message = describe(error, where) if isinstance(error, ValidationError) else f"{where}: {error}"
        raise BundleError(message) from error
