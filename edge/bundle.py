"""The model bundle: the contract between the desktop and the device.

A bundle is a folder with model files and `manifest.json`. The device loads a bundle only when the
manifest validates (schema version, required fields, types) and every file's sha256 matches; anything
else is rejected with the reason. The device trusts nothing that is not in the manifest.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from leukoscreen.edge.preprocessing import PreprocessConfig

SCHEMA_VERSION = 1
INTENDED_USE = "Research use only. Not for use in diagnostic procedures."
FORMATS = ("tflite-int8", "tflite-dynamic", "tflite-fp32", "onnx-int8", "onnx-fp32")
# Required manifest fields and their JSON types.
REQUIRED = {
    "schema_version": int, "name": str, "version": str, "task": str, "class_names": list,
    "input": dict, "preprocess": dict, "input_kind": str, "output": str, "calibration": dict,
    "decision": dict, "files": dict, "metrics": dict, "training": dict, "software_version": str,
    "created": str, "intended_use": str,
}


class BundleError(ValueError):
    """A bundle the device must not use; the message says what is wrong and what to do."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelBundle:
    path: Path
    manifest: dict

    @property
    def class_names(self) -> list[str]:
        return self.manifest["class_names"]

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    @property
    def formats(self) -> list[str]:
        return list(self.manifest["files"])

    @property
    def default_format(self) -> str:
        return self.manifest.get("default_format", self.formats[0])

    def classifier_file(self, fmt: str) -> Path | None:
        """Two-stage bundles (thesis Model 1): the ONNX classifier that reads this format's features."""
        entry = self.manifest["files"].get(fmt, {}).get("classifier")
        return self.path / entry["file"] if entry else None

    def runner(self, fmt: str | None = None, runtime: str = "auto", threads: int = 2,
               providers: list[str] | None = None, xnnpack: bool = True):
        """The device runtime for one of this bundle's formats (default: the bundle's default format)."""
        from leukoscreen.edge.runtimes import open_runner
        fmt = fmt or self.default_format
        return open_runner(self.file(fmt), runtime, threads, providers, self.classifier_file(fmt), xnnpack)

    def file(self, fmt: str) -> Path:
        if fmt not in self.manifest["files"]:
            raise BundleError(f"bundle {self.path} has no {fmt!r} model; it has: {', '.join(self.formats)}")
        return self.path / self.manifest["files"][fmt]["file"]

    @property
    def title(self) -> str:
        return f"{self.manifest['name']} {self.manifest['version']}"


def _file_entries(manifest: dict) -> list[tuple[str, dict]]:
    """Every file the manifest lists: the model of each format, and in a two-stage bundle the classifier
    fitted on that format's features."""
    entries = []
    for fmt, entry in manifest["files"].items():
        entries.append((fmt, entry))
        if isinstance(entry, dict) and "classifier" in entry:
            entries.append((f"{fmt}.classifier", entry["classifier"]))
    return entries


def validate_manifest(manifest: dict, where: str = "manifest.json") -> None:
    """Raise BundleError naming the first problem in a manifest."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where}: not a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{where}: schema_version {version!r} is not supported (this software reads "
                          f"version {SCHEMA_VERSION}); convert the model again with this version")
    for key, kind in REQUIRED.items():
        if key not in manifest:
            raise BundleError(f"{where}: required field {key!r} is missing")
        if not isinstance(manifest[key], kind):
            raise BundleError(f"{where}: field {key!r} should be a {kind.__name__}, "
                              f"got {type(manifest[key]).__name__}")
    if manifest["intended_use"] != INTENDED_USE:
        raise BundleError(f"{where}: intended_use must be {INTENDED_USE!r}")
    if manifest["output"] not in ("sigmoid", "softmax"):
        raise BundleError(f"{where}: output {manifest['output']!r} should be 'sigmoid' or 'softmax'")
    if manifest["input_kind"] not in ("field", "cell"):
        raise BundleError(f"{where}: input_kind {manifest['input_kind']!r} should be 'field' or 'cell'")
    if not manifest["files"]:
        raise BundleError(f"{where}: lists no model files")
    for fmt, entry in _file_entries(manifest):
        if fmt.split(".")[0] not in FORMATS:
            raise BundleError(f"{where}: unknown model format {fmt!r}; known: {', '.join(FORMATS)}")
        if not isinstance(entry, dict) or not {"file", "sha256"} <= set(entry):
            raise BundleError(f"{where}: files.{fmt} needs 'file' and 'sha256'")
        if Path(entry["file"]).name != entry["file"]:
            raise BundleError(f"{where}: files.{fmt}.file {entry['file']!r} must be a plain file name")
        if fmt.endswith(".classifier") and not entry["file"].endswith(".onnx"):
            raise BundleError(f"{where}: files.{fmt}.file must be an .onnx file (a skl2onnx classifier)")
    decision = manifest["decision"]
    for key in ("negative_classes", "threshold", "indeterminate_band"):
        if key not in decision:
            raise BundleError(f"{where}: decision.{key} is missing")
    unknown = set(decision["negative_classes"]) - set(manifest["class_names"])
    if unknown:
        raise BundleError(f"{where}: decision.negative_classes {sorted(unknown)} are not class names")
    band = decision["indeterminate_band"]
    numbers = [decision["threshold"], *band] if isinstance(band, list) else []
    if len(numbers) != 3 or not all(isinstance(v, (int, float)) for v in numbers):
        raise BundleError(f"{where}: decision.threshold must be a number and decision.indeterminate_band "
                          "a list of two numbers")
    low, high = band
    if not 0.0 <= low <= decision["threshold"] <= high <= 1.0:
        raise BundleError(f"{where}: need 0 <= indeterminate_band[0] <= threshold <= indeterminate_band[1] <= 1, "
                          f"got {decision['indeterminate_band']} and {decision['threshold']}")
    temperature = manifest["calibration"].get("temperature")
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise BundleError(f"{where}: calibration.temperature must be a positive number")
    try:
        PreprocessConfig.from_dict(manifest["preprocess"])
    except (TypeError, ValueError) as error:
        raise BundleError(f"{where}: preprocess: {error}") from error


def load_bundle(path: str | Path) -> ModelBundle:
    """Read and check a bundle folder: manifest schema and the sha256 of every model file."""
    path = Path(path)
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise BundleError(f"{path} is not a model bundle (no manifest.json); pass a folder made by "
                          "`leukoscreen convert`")
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{manifest_file}: cannot be read as JSON ({error})") from error
    validate_manifest(manifest, str(manifest_file))
    for fmt, entry in _file_entries(manifest):
        model_file = path / entry["file"]
        if not model_file.is_file():
            raise BundleError(f"{path}: the {fmt} model file {entry['file']} is missing; copy the whole bundle")
        if sha256_of(model_file) != entry["sha256"]:
            raise BundleError(f"{path}: {entry['file']} does not match its sha256 in the manifest (altered or "
                              "damaged); copy the bundle again")
    return ModelBundle(path, manifest)


def write_manifest(path: Path, manifest: dict) -> None:
    """Fill in file hashes, validate and write manifest.json (used by the converter)."""
    for _, entry in _file_entries(manifest):
        entry["sha256"] = sha256_of(path / entry["file"])
    validate_manifest(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
