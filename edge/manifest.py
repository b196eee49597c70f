"""The bundle manifest (`manifest.json`): the one typed definition of the contract between the desktop and
the device, used by `leukoscreen convert` to write it and by the device to read it.

Every part is a pydantic model that refuses unknown keys; the field descriptions are the schema's
documentation (`leukoscreen bundle schema` prints the JSON Schema, kept in `edge/manifest.schema.json`).
`schema_version` goes up whenever the meaning of a field changes. Schema 1 (before the files entries said
what a model file outputs) is read as schema 2 with a note; `leukoscreen bundle upgrade` rewrites it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from leukoscreen.edge.decision import DecisionRule, calibrate
from leukoscreen.edge.preprocessing import PreprocessConfig
from leukoscreen.edge.validation import describe

SCHEMA_VERSION = 2
INTENDED_USE = "Research use only. Not for use in diagnostic procedures."
Format = Literal["tflite-int8", "tflite-dynamic", "tflite-fp32", "onnx-int8", "onnx-fp32"]
FORMATS = get_args(Format)
REFERENCE_METRICS = "keras-fp32"  # the float model on the desktop, beside the formats


class BundleError(ValueError):
    """A bundle the device must not use; the message says what is wrong and what to do."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    zero_point: int = Field(0, description="quantization zero point")


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

    @model_validator(mode="after")
    def _classifier_matches_outputs(self) -> "FormatFile":
        if (self.outputs == "features") != (self.classifier is not None):
            raise ValueError(f"files entry {self.file}: outputs = {self.outputs!r} needs "
                             + ("a classifier" if self.outputs == "features" else "no classifier"))
        if self.classifier is not None and not self.classifier.file.endswith(".onnx"):
            raise ValueError(f"classifier {self.classifier.file!r} must be an .onnx file (a skl2onnx classifier)")
        return self


class InputSpec(Part):
    size: int = Field(ge=8, description="side of the square model input in pixels; the device checks the model "
                                        "file against it")
    channels: Literal[3] = 3
    layout: Literal["NHWC"] = "NHWC"


class Calibration(Part):
    temperature: float = Field(gt=0, description="temperature scaling: softmax(log(p) / T)")
    fitted_on: str = Field("validation split", description="the images the temperature was fitted on")

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return calibrate(probabilities, self.temperature)


class AnswerCounts(Part):
    n: int
    no_blasts: int
    indeterminate: int
    possible_blasts: int


class ScreeningOutcomes(Part):
    """The bundle's three answers on labelled images (the model and decision rule; no quality gate)."""
    blast: AnswerCounts
    non_blast: AnswerCounts
    sensitivity: float = Field(description="blast images not answered 'no blasts' (referred or indeterminate)")
    specificity: float = Field(description="non-blast images answered 'no blasts'")
    indeterminate_share: float


class ClassMetrics(Part):
    precision: float
    recall: float
    specificity: float
    f1: float
    support: int


class FormatMetrics(Part):
    """Test-split figures of one format (or of the desktop float model, `keras-fp32`)."""
    accuracy: float
    macro_f1: float
    macro_recall: float
    macro_specificity: float
    ci95: dict[str, tuple[float, float]] = Field(description="95% intervals resampling whole groups")
    per_class: dict[str, ClassMetrics]
    accuracy_change: float | None = Field(None, description="against the float model")
    macro_f1_change: float | None = None
    top1_agreement: float | None = Field(None, description="share of test images given the float model's class")
    max_probability_difference: float | None = None
    size_bytes: int | None = Field(None, description="model file plus classifier")
    screening: ScreeningOutcomes | None = Field(None, description="the decision rule's answers (default format)")


class TrainingRecord(Part):
    model: str
    data: str = Field(description="the training data folder's name")
    task: str
    split_method: str
    run: str = Field(description="the run folder the bundle was converted from")
    trained_precision: str = "float32"
    split_file: str = Field("split.csv", description="the split, in the bundle: files by sha256")
    metrics_on: str = "test split"
    backbone: str | None = None
    weights: str | None = None
    classifier: str | None = Field(None, description="Model 1: the classical classifier after the features")
    classifier_fitted_on: str | None = None


class Manifest(Part):
    schema_version: Literal[2] = SCHEMA_VERSION
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    task: str
    class_names: list[str] = Field(min_length=2)
    default_format: Format = Field(description="the format the device uses unless configured otherwise")
    input: InputSpec
    input_kind: Literal["field", "cell"] = Field(description="field: the model reads the whole field; cell: it "
                                                             "reads each white cell's crop")
    preprocess: PreprocessConfig
    output: Literal["sigmoid", "softmax"] = Field(description="sigmoid: one column, P(class_names[1]); "
                                                              "softmax: one probability per class")
    calibration: Calibration
    decision: DecisionRule
    files: dict[Format, FormatFile] = Field(min_length=1)
    metrics: dict[str, FormatMetrics] = Field(description="keras-fp32 and each format, on the test split")
    representative_images: int = Field(0, ge=0, description="training images that calibrated int8 quantization")
    training: TrainingRecord
    software_version: str
    created: str
    intended_use: Literal["Research use only. Not for use in diagnostic procedures."]

    @model_validator(mode="after")
    def _consistent(self) -> "Manifest":
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
    if isinstance(band, list) and len(band) == 2:
        decision["threshold"], decision["refer_at"] = band
    values.update(schema_version=SCHEMA_VERSION, input=given_input, files=files, decision=decision,
                  representative_images=quantization.get("representative_images", 0))
    return values


def parse_manifest(values, where: str = "manifest.json") -> tuple[Manifest, tuple[str, ...]]:
    """Validate manifest JSON (a dict) into a Manifest, and notes for the user (a migrated schema).
    Raises BundleError naming the first problem."""
    if not isinstance(values, dict):
        raise BundleError(f"{where}: not a JSON object")
    version, notes = values.get("schema_version"), ()
    if version == 1:
        values = _from_schema_1(values)
        notes = (f"{where} is schema 1 and was read as schema {SCHEMA_VERSION}; `leukoscreen bundle upgrade "
                 "BUNDLE` rewrites it",)
    elif version != SCHEMA_VERSION:
        raise BundleError(f"{where}: schema_version {version!r} is not supported (this software reads versions 1 "
                          f"and {SCHEMA_VERSION}); convert the model again with `leukoscreen convert RUN --out "
                          "BUNDLE`, or update the device's software")
    try:
        return Manifest.model_validate(values), notes
    except ValidationError as error:
        raise BundleError(describe(error, where)) from error
