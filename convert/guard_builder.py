"""`leukoscreen bundle guard BUNDLE --data DIR`: the unfamiliar-image guard (edge/guard.py) fitted into a bundle.

Every model file is given the features and logits as further outputs (convert/feature_outputs.py; the class
probabilities stay as they were, checked); the statistics are fitted on the features of the training part of
the bundle's split, the threshold on its validation part (split-conformal: at most 1 - `within` of new familiar
images above it), and the separation of both methods, test part against unfamiliar images (other folders, the
test part perturbed), is measured and recorded. `leukoscreen convert` does the same for every bundle it makes.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from leukoscreen.convert.bundle_builder import TFLITE_DERIVED, ConversionError, bundle_part
from leukoscreen.convert.feature_outputs import FeatureOutputError, onnx_with_feature_outputs, with_feature_outputs
from leukoscreen.edge.bundle import ModelBundle, format_file_names, load_bundle, write_manifest
from leukoscreen.edge.guard import energy, fit_mahalanobis, mahalanobis, save_statistics
from leukoscreen.edge.image_io import ImageReadError, is_image_file, read_image
from leukoscreen.edge.manifest import Manifest, StoredFile, guard_scores_agree, without_formats
from leukoscreen.edge.preprocessing import preprocess
from leukoscreen.edge.runtimes import RuntimeOptions, open_runner
from leukoscreen.edge.self_test import generated_fields
from leukoscreen.edge.validation import describe
from leukoscreen.training.splits import load_split

STATISTICS_FILE = "guard.npz"
NEW = "new-"  # files being written, until the whole manifest is valid


def auroc(familiar: np.ndarray, unfamiliar: np.ndarray) -> float:
    """Probability that an unfamiliar image scores above a familiar one (ties count half)."""
    from scipy.stats import mannwhitneyu
    return float(mannwhitneyu(unfamiliar, familiar).statistic / (len(familiar) * len(unfamiliar)))


def conformal_threshold(scores: np.ndarray, within: float) -> float:
    """The ceil((n + 1) * within)-th smallest validation score: a new familiar image scores above it with
    probability at most 1 - within (the largest score when n is too small for that)."""
    ordered = np.sort(scores)
    return float(ordered[min(math.ceil((len(ordered) + 1) * within), len(ordered)) - 1])


def _guarded_files(bundle: ModelBundle, folder: Path) -> dict[str, Path]:
    """Each format's file with the guard's outputs, written as NEW-FILE beside the old one."""
    new = {}
    for fmt, entry in sorted(bundle.manifest.files.items(), key=lambda item: item[0].startswith("onnx")):
        source, target = bundle.path / entry.file, folder / f"{NEW}{entry.file}"
        if entry.classifier:  # two-stage: the feature model's output already is what the guard reads
            continue
        if fmt.startswith("tflite"):
            target.write_bytes(with_feature_outputs(source.read_bytes()))
        elif fmt == "onnx-int8" and entry.quantization == TFLITE_DERIVED and "tflite-int8" in new:
            from leukoscreen.convert.exporters import tflite_to_onnx
            tflite_to_onnx(new["tflite-int8"], target)
        else:
            target.write_bytes(source.read_bytes())
            onnx_with_feature_outputs(target)
        new[fmt] = target
    return new


def _formats_the_guard_does_not_fit(bundle: ModelBundle, new_files: dict[str, Path], fitted: str, fields, score,
                                    expected, method: str) -> list[str]:
    """The formats whose guard scores on the self-test fields differ from the fitted format's beyond the device's
    tolerance (their features are not those the statistics and threshold were fitted on: the device would refuse
    them), each named in a note; they are left out of the bundle."""
    unfit = []
    for name in bundle.manifest.files:
        if name == fitted:
            continue
        runner = open_runner(new_files.get(name, bundle.file(name)), RuntimeOptions(format=name),
                             bundle.classifier_file(name))
        scores = score(runner.predict_all(fields)[1])
        if not guard_scores_agree(method, scores, expected):
            print(f"note: {name} left out of the bundle: its guard scores on the self-test fields "
                  f"({', '.join(f'{v:.4g}' for v in scores)}) are not {fitted}'s, which the guard was fitted on "
                  f"({', '.join(f'{v:.4g}' for v in expected)}); its features differ too much for the guard")
            unfit.append(name)
    return unfit


def _unfamiliar_sets(folders: list[Path], test_images: list[str], limit: int, preprocess_config,
                     perturb: bool) -> dict[str, np.ndarray]:
    """Preprocessed unfamiliar images: up to `limit` of each folder, and the test part perturbed."""
    rng = np.random.default_rng(0)
    sets = {}

    def images(paths, change=None):
        out = []
        for path in paths:
            try:
                rgb = read_image(path)
            except ImageReadError:
                continue
            out.append(preprocess(change(rgb) if change else rgb, preprocess_config))
        return np.stack(out) if out else None

    for folder in folders:
        files = sorted(str(p) for p in Path(folder).rglob("*") if is_image_file(p))
        chosen = [files[i] for i in sorted(rng.permutation(len(files))[:limit])]
        if chosen:
            sets[Path(folder).name] = images(chosen)
    if perturb and test_images:
        from leukoscreen.training.robustness import PERTURBATIONS
        chosen = [test_images[i] for i in sorted(rng.permutation(len(test_images))[:limit])]
        for name, change in PERTURBATIONS.items():
            sets[f"test part, {name}"] = images(chosen, change)
    return {name: x for name, x in sets.items() if x is not None}


def add_guard(bundle_path: Path, data: Path, version: str | None = None, method: str = "mahalanobis",
              components: int = 128, within: float = 0.99, unfamiliar: list[Path] = (), limit: int = 150,
              perturb: bool = True) -> Manifest:
    """Fit the guard into a bundle (see the module); the bundle changes only when everything succeeded."""
    if not 0 < within < 1:
        raise ConversionError(f"--within {within}: the share of familiar images to pass, between 0 and 1 (e.g. 0.99)")
    if components < 1 or limit < 0:
        raise ConversionError(f"--components {components}, --limit {limit}: components 1 or more, limit 0 or more "
                              "(0: the separation is not measured)")
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    if manifest.adaptation:
        raise ConversionError(f"{bundle.path} was adapted to {manifest.adaptation.adapted_on} (`leukoscreen adapt`): "
                              "its head is the guard's class means, which a new guard would replace; fit the guard "
                              f"on the original bundle ({manifest.adaptation.adapted_from}) and adapt that again")
    for stale in bundle.path.glob(f"{NEW}*"):   # left by an interrupted run
        stale.unlink()
    if method not in ("mahalanobis", "energy"):
        raise ConversionError(f"unknown guard method {method!r}; use mahalanobis or energy")
    fmt = manifest.default_format
    two_stage = manifest.files[fmt].classifier is not None
    if method == "energy" and two_stage:
        raise ConversionError("a two-stage bundle (thesis Model 1) has no logits: use --method mahalanobis")
    parts = {name: bundle_part(bundle, data, name) for name in ("train", "val", "test")}
    try:
        try:
            new_files = _guarded_files(bundle, bundle.path)
        except FeatureOutputError as error:
            raise ConversionError(f"{bundle.path}: no guard can be added: {error}") from error
        fields = generated_fields(manifest.input.size, manifest.self_test.fields if manifest.self_test else 6)
        for name, path in new_files.items():  # the probabilities must not change
            before = bundle.runner(RuntimeOptions(format=name)).predict(fields)
            after = open_runner(path, RuntimeOptions()).predict(fields)
            if np.abs(before - after).max() > 1e-6:
                raise ConversionError(f"{name}: the file with the guard's outputs gives other probabilities (up to "
                                      f"{np.abs(before - after).max():.4f}); the bundle was left as it was")
        runner = (bundle.runner(RuntimeOptions(format=fmt)) if fmt not in new_files
                  else open_runner(new_files[fmt], RuntimeOptions(), bundle.classifier_file(fmt)))
        outputs = {name: runner.predict_all(part.images)[1] for name, part in parts.items()}
        width = outputs["train"][0].shape[1]
        if components > width:
            print(f"note: {components} components asked for, the model has {width} features: keeping {width}")
        statistics = fit_mahalanobis(outputs["train"][0], parts["train"].labels, min(components, width))
        scorers = {"mahalanobis": lambda extra: mahalanobis(extra[0], statistics)}
        if not two_stage:
            scorers["energy"] = lambda extra: energy(extra[1])
        test_paths = [str(Path(data) / row.path) for row in load_split(bundle.path / manifest.training.split_file)
                      if row.part == "test"]
        sets = _unfamiliar_sets([Path(f) for f in unfamiliar], test_paths, limit, manifest.preprocess, perturb)
        unfamiliar_outputs = {name: runner.predict_all(x)[1] for name, x in sets.items()}
        separation = {name: {m: round(auroc(score(outputs["test"]), score(extra)), 4) for m, score in scorers.items()}
                      for name, extra in unfamiliar_outputs.items()}
        threshold = conformal_threshold(scorers[method](outputs["val"]), within)
        passed = float(np.mean(scorers[method](outputs["test"]) <= threshold))
        self_test_scores = scorers[method](runner.predict_all(fields)[1])
        unfit = _formats_the_guard_does_not_fit(bundle, new_files, fmt, fields, scorers[method], self_test_scores,
                                                method)
        if not unfamiliar_outputs:
            print("note: no unfamiliar images (--limit 0): the separation was not measured")
        for name, extra in unfamiliar_outputs.items():
            print(f"  {name}: AUROC " + ", ".join(f"{m} {a:.3f}" for m, a in separation[name].items())
                  + f"; not screened by the {method} guard {np.mean(scorers[method](extra) > threshold):.0%}")
        print(f"guard ({method}): threshold {threshold:.4g} on {len(parts['val'].labels)} validation images; passes "
              f"{passed:.1%} of the {len(parts['test'].labels)} test images")
        statistics_entry = None
        if method == "mahalanobis":
            (bundle.path / f"{NEW}{STATISTICS_FILE}").write_bytes(save_statistics(statistics))
            statistics_entry = StoredFile.of(bundle.path, f"{NEW}{STATISTICS_FILE}").model_dump() | {
                "file": STATISTICS_FILE}
        values = manifest.model_dump()
        for name, path in new_files.items():
            values["files"][name] |= {"sha256": StoredFile.of(bundle.path, path.name).sha256, "guard_outputs": True}
        values = without_formats(values, unfit, fmt)
        values["version"] = version or manifest.version
        values["guard"] = {
            "method": method, "statistics": statistics_entry,
            "components": statistics["projection"].shape[1] if method == "mahalanobis" else None,
            "threshold": threshold, "features_from": fmt,
            "threshold_rule": f"score {min(math.ceil((len(parts['val'].labels) + 1) * within), len(parts['val'].labels))}"
                              f" of {len(parts['val'].labels)}, counted from the lowest (split-conformal, {within:.0%} "
                              "of familiar images within)",
            "fitted_on": "statistics: training part; threshold: validation part (the bundle's split)",
            "separation": separation, "familiar_test_share": passed,
            "self_test_scores": [float(v) for v in np.round(self_test_scores, 4)] if manifest.self_test else None}
        try:
            manifest = Manifest.model_validate(values)
        except ValidationError as error:
            raise ConversionError(f"the bundle was left as it was: {describe(error)}") from None
        for path in [*new_files.values(), bundle.path / f"{NEW}{STATISTICS_FILE}"]:
            if path.exists():
                os.replace(path, bundle.path / path.name.removeprefix(NEW))
        stale = {bundle.path / file for name in unfit for file in format_file_names(bundle.manifest, name)}
    finally:
        for path in bundle.path.glob(f"{NEW}*"):
            path.unlink()
    if write_manifest(bundle.path, manifest):
        print("note: its signature was of the old manifest and was removed: sign it again (`leukoscreen sign`)")
    for path in stale:   # after the manifest that no longer lists them
        path.unlink(missing_ok=True)
    print(f"{bundle.path}: guard added, bundle version {manifest.version}")
    return manifest
