"""The model bundle: a folder with model files and `manifest.json` (its typed definition: `edge/manifest.py`).

The device loads a bundle only when the manifest validates and every file's sha256 matches, and opens a
model file only after checking its input and output against the manifest; anything else is refused with
the reason. The device trusts nothing that is not in the manifest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from leukoscreen.edge.manifest import BundleError, FormatFile, Manifest, parse_manifest, sha256_of
from leukoscreen.edge.preprocessing import PreprocessConfig
from leukoscreen.edge.runtimes import ModelRunner, RuntimeOptions, RuntimeProblem, open_runner


@dataclass(frozen=True)
class ModelBundle:
    path: Path
    manifest: Manifest
    notes: tuple[str, ...] = ()     # what the user should know, e.g. an older schema read on load

    @property
    def title(self) -> str:
        return self.manifest.title

    @property
    def class_names(self) -> list[str]:
        return self.manifest.class_names

    @property
    def preprocess(self) -> PreprocessConfig:
        return self.manifest.preprocess

    @property
    def formats(self) -> list[str]:
        return list(self.manifest.files)

    def entry(self, fmt: str | None = None) -> FormatFile:
        """The files entry of a format (None: the default format)."""
        fmt = fmt or self.manifest.default_format
        if fmt not in self.manifest.files:
            raise BundleError(f"bundle {self.path} has no {fmt!r} model; it has: {', '.join(self.formats)}")
        return self.manifest.files[fmt]

    def file(self, fmt: str | None = None) -> Path:
        return self.path / self.entry(fmt).file

    def classifier_file(self, fmt: str | None = None) -> Path | None:
        """Two-stage bundles (thesis Model 1): the ONNX classifier that reads this format's features."""
        classifier = self.entry(fmt).classifier
        return self.path / classifier.file if classifier else None

    def runner(self, options: RuntimeOptions = RuntimeOptions()) -> ModelRunner:
        """The device runtime for `options.format` (default: the bundle's default format), checked against the
        manifest: the file's input side and the width of its output."""
        runner = open_runner(self.file(options.format), options, self.classifier_file(options.format))
        expected = self.manifest.input.size
        if runner.input_size != expected:
            raise RuntimeProblem(f"{self.file(options.format).name} reads {runner.input_size}x{runner.input_size} "
                                 f"images but the manifest says {expected}: the bundle's files do not belong together")
        width = 1 if self.manifest.output == "sigmoid" and not self.classifier_file(options.format) else \
            len(self.class_names)
        if runner.output_size not in (width, None):
            raise RuntimeProblem(f"{self.file(options.format).name} gives {runner.output_size} numbers per image but "
                                 f"the manifest ({self.manifest.output}, {len(self.class_names)} classes) needs "
                                 f"{width}: the bundle's files do not belong together")
        return runner


def _file_entries(manifest: Manifest):
    for fmt, entry in manifest.files.items():
        yield fmt, entry
        if entry.classifier:
            yield f"{fmt} classifier", entry.classifier


def read_manifest(path: Path) -> tuple[Manifest, tuple[str, ...]]:
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise BundleError(f"{path} is not a model bundle (no manifest.json); pass a folder made by "
                          "`leukoscreen convert`")
    try:
        values = json.loads(manifest_file.read_text())
    except (OSError, ValueError) as error:
        raise BundleError(f"{manifest_file}: cannot be read as JSON ({error})") from error
    return parse_manifest(values, str(manifest_file))


def load_bundle(path: str | Path) -> ModelBundle:
    """Read and check a bundle folder: the manifest's schema and the sha256 of every file it lists."""
    path = Path(path)
    manifest, notes = read_manifest(path)
    for what, entry in _file_entries(manifest):
        model_file = path / entry.file
        if not model_file.is_file():
            raise BundleError(f"{path}: the {what} model file {entry.file} is missing; copy the whole bundle")
        if sha256_of(model_file) != entry.sha256:
            raise BundleError(f"{path}: {entry.file} does not match its sha256 in the manifest (altered or "
                              "damaged); copy the bundle again")
    return ModelBundle(path, manifest, notes)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write manifest.json into a bundle folder (the converter; `leukoscreen bundle upgrade`), after
    checking that every file it lists is there with its hash."""
    for what, entry in _file_entries(manifest):
        if sha256_of(path / entry.file) != entry.sha256:
            raise BundleError(f"{path}: {entry.file} ({what}) does not match the manifest's sha256")
    (path / "manifest.json").write_text(manifest.model_dump_json(indent=2) + "\n")
