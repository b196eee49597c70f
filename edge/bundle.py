"""The model bundle: a folder with model files and `manifest.json` (its typed definition: `edge/manifest.py`).

The device loads a bundle only when the manifest validates and every file's sha256 matches, and uses a
model file only after checking its input and output against the manifest and running the bundle's self-test
through its own runtime (`edge/self_test.py`); anything else is refused with the reason. The device trusts nothing that is not in the manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from leukoscreen.edge.guard import load_statistics
from leukoscreen.edge.manifest import (BundleError, FormatFile, Manifest, StoredFile, manifest_digest, manifest_json,
                                       parse_manifest, sha256_of)
from leukoscreen.edge.preprocessing import PreprocessConfig
from leukoscreen.edge.runtimes import ModelRunner, RuntimeOptions, RuntimeProblem, open_runner
from leukoscreen.edge.self_test import SelfTestFailed, fields_sha256, generated_fields, largest_difference


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
    def manifest_digest(self) -> str:
        """sha256 of the manifest's values as loaded (what a signature signs; the file's manifest_sha256)."""
        return manifest_digest(json.loads(self.manifest.model_dump_json(exclude={"manifest_sha256"})))

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
        manifest (the file's input side, the width of its output) and by the bundle's self-test."""
        fmt = options.format or self.manifest.default_format
        runner = open_runner(self.file(fmt), options, self.classifier_file(fmt), self.verified_contents(fmt))
        expected = self.manifest.input.size
        if runner.input_size != expected:
            raise RuntimeProblem(f"{self.file(fmt).name} reads {runner.input_size}x{runner.input_size} images but "
                                 f"the manifest says {expected}: the bundle's files do not belong together")
        width = 1 if self.manifest.output == "sigmoid" and not self.classifier_file(fmt) else len(self.class_names)
        if runner.output_size not in (width, None):
            raise RuntimeProblem(f"{self.file(fmt).name} gives {runner.output_size} numbers per image but the "
                                 f"manifest ({self.manifest.output}, {len(self.class_names)} classes) needs {width}: "
                                 "the bundle's files do not belong together")
        spec = self.entry(fmt).input
        dtype, scale, zero_point = runner.input_spec
        if (dtype, zero_point) != (spec.dtype, spec.zero_point) or abs(scale - spec.scale) > 1e-6 * spec.scale:
            raise RuntimeProblem(f"{self.file(fmt).name} takes {dtype} input (scale {scale:g}, zero point "
                                 f"{zero_point}) but the manifest says {spec.dtype} ({spec.scale:g}, {spec.zero_point}): "
                                 "the bundle's files do not belong together")
        runner.self_test_difference = self.self_test(fmt, runner)
        return runner

    def verified_contents(self, fmt: str) -> dict[Path, bytes]:
        """The bytes of a format's files, read once and checked against the manifest's hashes: what the runtime
        then works from, so a file changed on disk after this check cannot change the model."""
        entry = self.entry(fmt)
        return {self.path / stored.file: self._verified(stored)
                for stored in ((entry, entry.classifier) if entry.classifier else (entry,))}

    def _verified(self, stored: StoredFile) -> bytes:
        path = self.path / stored.file
        try:
            data = path.read_bytes()
        except OSError as error:
            raise BundleError(f"{path}: cannot be read ({error.strerror}); copy the bundle again") from error
        if hashlib.sha256(data).hexdigest() != stored.sha256:
            raise BundleError(f"{path}: does not match its sha256 in the manifest (changed since the bundle "
                              "was made, or damaged); copy the bundle again")
        return data

    @cached_property
    def guard_statistics(self) -> dict[str, np.ndarray] | None:
        """The guard's statistics, read once and checked against their hash (None: no guard, or the energy
        method)."""
        guard = self.manifest.guard
        if guard is None or guard.statistics is None:
            return None
        try:
            statistics = load_statistics(self._verified(guard.statistics), guard.components)
            if self.manifest.adaptation and len(statistics["class_means"]) != len(self.manifest.class_names):
                raise ValueError(f"an adapted bundle's head needs one class mean per class "
                                 f"({len(self.manifest.class_names)}), the file has {len(statistics['class_means'])}")
            return statistics
        except ValueError as error:
            if isinstance(error, BundleError):
                raise
            raise BundleError(f"{self.path / guard.statistics.file}: {error}; copy the bundle again") from error

    def self_test(self, fmt: str, runner: ModelRunner) -> float | None:
        """Run the manifest's self-test through this runtime: the largest difference from the converter's
        outputs, or None when the bundle has no self-test. Raises SelfTestFailed beyond the tolerance."""
        test = self.manifest.self_test
        if test is None:
            return None
        fields = generated_fields(self.manifest.input.size, test.fields)
        if fields_sha256(fields) != test.fields_sha256:
            raise SelfTestFailed(f"{self.path}: this device generates other self-test fields than the converter "
                                 f"({test.generator}); the software versions differ: update it or convert again")
        probabilities, extra = runner.predict_all(fields)
        difference = largest_difference(probabilities, self.entry(fmt).self_test_outputs)
        if difference > test.tolerance:
            raise SelfTestFailed(f"{self.path}: {fmt} ({self.entry(fmt).file}) failed its self-test through "
                                 f"{runner.name}: its class probabilities on the generated fields differ from the "
                                 f"converter's by up to {difference:.3f} (tolerance {test.tolerance}); this runtime "
                                 "or CPU computes the file differently")
        if self.manifest.guard is not None:
            statistics = self.guard_statistics   # BundleError when damaged: no format can be used
            try:
                scores = self.manifest.guard.score(extra, statistics)
            except ValueError as error:
                raise RuntimeProblem(f"{self.file(fmt).name}: {error}; the bundle's files do not belong together") from error
            adaptation = self.manifest.adaptation
            if adaptation and adaptation.self_test_probabilities is not None:
                head = largest_difference(adaptation.probabilities(extra, statistics), adaptation.self_test_probabilities)
                if head > test.tolerance:
                    raise SelfTestFailed(f"{self.path}: {fmt} ({self.entry(fmt).file}) failed its self-test through "
                                         f"{runner.name}: the adapted head's probabilities on the generated fields "
                                         f"differ from `adapt`'s by up to {head:.3f} (tolerance {test.tolerance}); its "
                                         "class means do not belong to it: adapt the bundle again")
            if not self.manifest.guard.agrees(scores):
                raise SelfTestFailed(f"{self.path}: {fmt} ({self.entry(fmt).file}) failed its self-test through "
                                     f"{runner.name}: its guard scores on the generated fields "
                                     f"({', '.join(f'{v:.4g}' for v in scores)}) are not the converter's "
                                     f"({', '.join(f'{v:.4g}' for v in self.manifest.guard.self_test_scores)}); "
                                     "the guard's statistics do not belong to this model file")
        return difference

    def open_checked(self, options: RuntimeOptions = RuntimeOptions()) -> tuple[ModelRunner, str, tuple[str, ...]]:
        """The runner of the asked-for format (default: the bundle's default) or, when that one is refused by
        its checks or self-test, of the next format that passes, with a note saying why; BundleError when
        none passes."""
        wanted = options.format or self.manifest.default_format
        self.entry(wanted)  # an unknown format is an error, not a fallback
        refused = []
        for fmt in [wanted, *(f for f in self.formats if f != wanted)]:
            if fmt.startswith("onnx") != wanted.startswith("onnx") and options.runtime != "auto":
                continue  # a runtime that was chosen by name cannot run the other kind of file
            try:
                runner = self.runner(options.with_format(fmt))
            except RuntimeProblem as error:  # SelfTestFailed included
                refused.append(str(error))
                continue
            notes = tuple(f"{reason}; using {fmt} instead" for reason in refused)
            return runner, fmt, notes
        raise BundleError(f"{self.path}: no model format of this bundle can be used here: " + " | ".join(refused))


def format_file_names(manifest: Manifest, fmt: str) -> list[str]:
    """The files of one format: its model file, and its classifier's (two-stage bundles)."""
    entry = manifest.files[fmt]
    return [stored.file for stored in (entry, entry.classifier) if stored is not None]


def bundle_files(manifest: Manifest):
    """(what, StoredFile) of every file a manifest lists."""
    for fmt, entry in manifest.files.items():
        yield fmt, entry
        if entry.classifier:
            yield f"{fmt} classifier", entry.classifier
    if manifest.guard and manifest.guard.statistics:
        yield "guard statistics", manifest.guard.statistics


def read_manifest(path: Path) -> tuple[Manifest, tuple[str, ...]]:
    manifest_file = path / "manifest.json"
    if not manifest_file.is_file():
        raise BundleError(f"{path} is not a model bundle (no manifest.json); pass a folder made by "
                          "`leukoscreen convert`")
    try:
        values = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise BundleError(f"{manifest_file}: cannot be read as JSON ({error})") from error
    return parse_manifest(values, str(manifest_file))


def load_bundle(path: str | Path) -> ModelBundle:
    """Read and check a bundle folder: the manifest's schema and the sha256 of every file it lists."""
    path = Path(path)
    manifest, notes = read_manifest(path)
    for what, entry in bundle_files(manifest):
        model_file = path / entry.file
        if not model_file.is_file():
            raise BundleError(f"{path}: the {what} model file {entry.file} is missing; copy the whole bundle")
        if sha256_of(model_file) != entry.sha256:
            raise BundleError(f"{path}: {entry.file} does not match its sha256 in the manifest (altered or "
                              "damaged); copy the bundle again")
    return ModelBundle(path, manifest, notes)


def write_manifest(path: Path, manifest: Manifest) -> bool:
    """Write manifest.json into a bundle folder (the converter; `leukoscreen bundle upgrade`), after
    checking that every file it lists is there with its hash. A signature (manifest.sig) of an earlier
    manifest is removed, as no device would accept it; returns True when one was."""
    for what, entry in bundle_files(manifest):
        if sha256_of(path / entry.file) != entry.sha256:
            raise BundleError(f"{path}: {entry.file} ({what}) does not match the manifest's sha256")
    text = manifest_json(manifest)
    signature = path / "manifest.sig"
    stale = signature.exists() and json.loads(text)["manifest_sha256"] not in signature.read_text(errors="replace")
    temporary = path / "manifest.json.new"   # replaced in one step: an interrupted write leaves the old one
    try:
        temporary.write_text(text, encoding="utf-8")
    except OSError:   # a full disk: the old manifest and its signature stay as they were
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path / "manifest.json")
    if stale:   # only now: a failed write above keeps a valid signature of the manifest that stays
        signature.unlink()
    return stale
