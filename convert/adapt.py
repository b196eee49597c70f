"""`leukoscreen adapt BUNDLE --data LOCAL --out NEW`: a bundle refitted on a site's own labelled images.

A clinic with another microscope labels about 100 of its own fields (or, for a cell bundle, cell crops): one
sub-folder per class of the bundle. The backbone, its model files and the guard's whitening (the covariance
of the training features) are kept; refitted on the local images, through the device's own runtime:
- the head: each class mean of the guard's statistics becomes the local images' mean in the whitened features,
  shrunk towards the original mean as if that were `prior_weight` images; the probabilities are the posterior
  of Gaussian classes sharing the training covariance, equal priors (`Adaptation.probabilities`);
- the calibration (temperature) and the decision threshold, on leave-one-out probabilities of the local
  images (each image scored by class means fitted without it), by the converter's own rules;
- the guard's threshold, on the leave-one-out distances (split-conformal, as `bundle guard`).
A part of the local images (`--held-out`, stratified per class) is kept out of all of it and screened with
the old and the new bundle, through the whole device pipeline for a field bundle (gate, cell finder, model,
guard, decision) and through the model, guard and decision for a cell bundle (its images are crops). The new
bundle records what it was adapted on, from which bundle, and the figures. Research use only.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from leukoscreen.convert.bundle_builder import ConversionError
from leukoscreen.convert.calibration import decision_parameters
from leukoscreen.convert.guard_builder import STATISTICS_FILE, conformal_threshold
from leukoscreen.edge.bundle import bundle_files, format_file_names, load_bundle, write_manifest
from leukoscreen.edge.field_analysis import analyse_field
from leukoscreen.edge.quality import reason_name
from leukoscreen.edge.device_config import DeviceConfig, load_config
from leukoscreen.edge.guard import class_distances, class_mean_probabilities, mahalanobis, save_statistics, whiten
from leukoscreen.edge.image_io import ImageReadError, is_image_file, read_image
from leukoscreen.edge.manifest import Manifest, StoredFile, without_formats
from leukoscreen.edge.preprocessing import preprocess
from leukoscreen.edge.runtimes import RuntimeOptions, RuntimeProblem
from leukoscreen.edge.screening import ScreeningModel, screen
from leukoscreen.edge.self_test import generated_fields
from leukoscreen.edge.validation import describe
from leukoscreen.training.robustness import record_answer, summarize_answers

MIN_FIT_PER_CLASS = 3
MIN_GUARD_IMAGES = 10   # local images the gate passes, below which the guard's threshold uses them all
MIN_LABEL_AUROC = 0.7
SUGGESTED_IMAGES = 100
MEASURES = ("sensitivity", "specificity", "not_screened", "possible_blasts", "no_blasts",
            "confidently wrong among screened", "class accuracy among screened")


def local_images(folder: Path, class_names: list[str]) -> tuple[list[Path], np.ndarray]:
    """The images of LOCAL/CLASS/ and their class indices; each sub-folder must name a class of the bundle."""
    if not folder.is_dir():
        raise ConversionError(f"{folder}: no such folder; give one sub-folder per class of the bundle "
                              f"({', '.join(class_names)}) holding the site's labelled images")
    by_name = {name.lower(): index for index, name in enumerate(class_names)}
    paths, labels, seen = [], [], {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name.lower() not in by_name:
            raise ConversionError(f"{sub}: not a class of the bundle ({', '.join(class_names)}); name each "
                                  "sub-folder for the class of its images (case does not matter)")
        if sub.name.lower() in seen:
            raise ConversionError(f"{sub} and {seen[sub.name.lower()]} name the same class: put its images in one")
        seen[sub.name.lower()] = sub
        files = sorted(p for p in sub.rglob("*") if is_image_file(p) and p.is_file())  # no pipes or devices
        paths += files
        labels += [by_name[sub.name.lower()]] * len(files)
    return paths, np.array(labels, dtype=int)


def stratified_split(labels: np.ndarray, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices to fit on and to hold out: `held_out` of each class (rounded), chosen at random."""
    rng = np.random.default_rng(seed)
    fit, kept = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(held_out * len(members)))
        kept += list(members[:count])
        fit += list(members[count:])
    return np.sort(np.array(fit, dtype=int)), np.sort(np.array(kept, dtype=int))


def fit_class_means(z: np.ndarray, labels: np.ndarray, original: np.ndarray,
                    prior_weight: float) -> tuple[np.ndarray, np.ndarray]:
    """Shrunk class means of whitened local features, and each image's squared distances from the class means
    fitted without it (leave-one-out; N x classes)."""
    classes = len(original)
    sums = np.stack([z[labels == c].sum(axis=0) for c in range(classes)])
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    means = (sums + prior_weight * original) / (counts + prior_weight)[:, None]
    distances = ((z[:, None, :] - means[None]) ** 2).sum(axis=2)
    own = (sums[labels] - z + prior_weight * original[labels]) / (counts[labels] - 1 + prior_weight)[:, None]
    distances[np.arange(len(z)), labels] = ((z - own) ** 2).sum(axis=1)
    return means.astype(np.float32), distances


def _screen_held_out(model: ScreeningModel, images: list[np.ndarray], labels: np.ndarray,
                     device: DeviceConfig) -> tuple[dict, str | None]:
    """The held-out images' answers (see the module), with the class accuracy among the screened ones, and the
    main reason for not screening."""
    manifest = model.bundle.manifest
    negative = {manifest.class_names.index(n) for n in manifest.decision.negative_classes}
    answers, correct = [], []
    for rgb, label in zip(images, labels):
        truth = "non_blast" if label in negative else "blast"
        if manifest.input_kind == "field":
            record = screen(rgb, model, device.cell_finder, device.quality, scale=device.scale)
            answer, score, why = record_answer(record)
            probabilities = list(record.probabilities.values()) if record.probabilities else None
        else:
            calibrated, guard = model._probabilities(preprocess(rgb, manifest.preprocess)[None])
            score = float(manifest.decision.score(calibrated, manifest.class_names)[0])
            unfamiliar = guard is not None and guard[0] > model.guard.threshold
            answer = "not_screened" if unfamiliar else manifest.decision.decide(score).code
            why, score, probabilities = ("unfamiliar image", None, None) if unfamiliar else ("", score, calibrated[0])
        if answer != "not_screened" and probabilities is not None:
            correct.append(int(np.argmax(probabilities)) == label)
        answers.append((truth, answer, score, why))
    row = summarize_answers(answers) | {"class accuracy among screened": float(np.mean(correct)) if correct else None}
    return ({key: None if row[key] is None else round(float(row[key]), 4) for key in MEASURES} | {"n": row["n"]},
            row["not screened, main reason"])


def adapt(bundle_path: Path, data: Path, out: Path, held_out: float = 0.3, prior_weight: float = 5.0,
          within: float = 0.99, version: str | None = None, seed: int = 0,
          device: DeviceConfig | None = None, accept_disagreement: bool = False) -> Manifest:
    """Write the adapted copy of a bundle to `out` (see the module); the original is not changed. device: the
    gate, cell finder and scale settings the held-out images are screened with (default: the device's)."""
    device = device or load_config(None)
    if not 0 <= held_out <= 0.5 or not 0 <= prior_weight <= 1000 or not 0.5 <= within < 1:
        raise ConversionError(f"--held-out {held_out}, --prior-weight {prior_weight}, --within {within}: the held-out "
                              "share in [0, 0.5], the prior weight in [0, 1000] images, the share within in [0.5, 1)")
    out = Path(out)
    if out.exists():
        raise ConversionError(f"{out} exists: give a new folder for the adapted bundle")
    old = ScreeningModel.open(bundle_path)
    bundle, manifest = old.bundle, old.bundle.manifest
    for inside in (bundle.path, Path(data)):
        if out.resolve().is_relative_to(inside.resolve()):
            raise ConversionError(f"{out} is inside {inside}: give a folder outside the bundle and the local images")
    if manifest.guard is None or manifest.guard.method != "mahalanobis":
        raise ConversionError(f"{bundle.path}: adapting needs the Mahalanobis guard's statistics (the head is built on "
                              "them): run `leukoscreen bundle guard` on it first")
    classes = manifest.class_names
    images, labels, paths = _read_local(Path(data), classes)
    passed = _gate_passes(images, manifest, device)
    fit, test = stratified_split(labels, held_out, seed)
    counts = np.bincount(labels[fit], minlength=len(classes))
    if counts.min() < MIN_FIT_PER_CLASS:
        raise ConversionError(f"{data}: adapting needs at least {MIN_FIT_PER_CLASS} images of every class to fit on "
                              f"(after {held_out:.0%} held out); it has " + ", ".join(
                                  f"{n} {c}" for c, n in zip(classes, counts)) + ". Label more of the missing "
                              "classes: a head fitted without a class would call every image something else")
    runner = old.runner
    x = np.stack([preprocess(images[i], manifest.preprocess) for i in fit])
    original_probabilities, _ = old._probabilities(x)
    _check_labels(original_probabilities, labels[fit], manifest, accept_disagreement)
    statistics = bundle.guard_statistics
    z = whiten(runner.predict_all(x)[1][0], statistics)
    means, distances = fit_class_means(z.astype(np.float64), labels[fit], statistics["class_means"].astype(np.float64),
                                       prior_weight)
    try:
        calibration, rule = decision_parameters(class_mean_probabilities(distances), labels[fit], classes,
                                                manifest.decision.negative_classes,
                                                manifest.decision.target_sensitivity,
                                                lowest_temperature=1.0)
    except ValueError as error:
        raise ConversionError(f"{data}: {error}") from error
    where = f"{len(fit)} local images of {Path(data).name} (leave-one-out), `leukoscreen adapt`"
    calibration = calibration.model_copy(update={"fitted_on": where + "; at least 1 (never sharpened: local "
                                                                      "images that separate would drive it to 0)"})
    # about 100 local images guarantee no sensitivity: never answer "No blasts" above where the original did
    original = manifest.decision
    rule = rule.model_copy(update={
        "threshold": min(rule.threshold, original.threshold), "refer_at": min(rule.refer_at, original.refer_at),
        "threshold_rule": f"the lower of the local rule ({rule.threshold_rule.replace('validation split', 'local images')}"
                          f": {rule.threshold:.4g}) and the original bundle's ({original.threshold:.4g}); refer at "
                          "the lower of both",
        "chosen_on": where})
    nearest = distances.min(axis=1)
    screened = passed[fit]   # the guard sees only fields the gate passes: a refused, blurred one must not widen it
    if screened.sum() < MIN_GUARD_IMAGES:
        print(f"warning: the quality gate passes {int(screened.sum())} of the {len(fit)} local images fitted on, too "
              "few for the guard's threshold: it is fitted on all of them (set the gate for this microscope first)")
        screened = np.ones(len(fit), bool)
    threshold = conformal_threshold(nearest[screened], within)
    n_guard = int(screened.sum())
    rank = min(math.ceil((n_guard + 1) * within), n_guard)
    enough = math.ceil((n_guard + 1) * within) <= n_guard
    if not enough:
        _note_farthest(nearest, screened, [paths[i] for i in fit], within)
    _note_guard(threshold, manifest.guard.threshold)
    new_statistics = statistics | {"class_means": means}
    if len(test):  # the share of the held-out local images the new guard passes (else of the fitted ones, left out)
        held_features = runner.predict_all(np.stack([preprocess(images[i], manifest.preprocess) for i in test]))[1][0]
        familiar_share = float(np.mean(mahalanobis(held_features, new_statistics) <= threshold))
    else:
        familiar_share = float(np.mean(distances.min(axis=1) <= threshold))
    fields = generated_fields(manifest.input.size, manifest.self_test.fields) if manifest.self_test else None
    field_features = runner.predict_all(fields)[1][0] if fields is not None else None
    # a temporary folder of its own beside OUT (never one that exists), renamed to OUT only when complete
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.adapting-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(building, 0o777 & ~umask)   # mkdtemp's folder is its owner's only; a bundle folder is not
    try:
        for name in [entry.file for _, entry in bundle_files(manifest)] + [manifest.training.split_file]:
            if (bundle.path / name).is_file():
                shutil.copy2(bundle.path / name, building / name)
        (building / STATISTICS_FILE).write_bytes(save_statistics(new_statistics))
        values = manifest.model_dump()
        values["version"] = version or f"{manifest.version}-adapted"
        values["calibration"], values["decision"] = calibration.model_dump(), rule.model_dump()
        values["guard"] |= {
            "statistics": StoredFile.of(building, STATISTICS_FILE).model_dump(), "threshold": threshold,
            "threshold_rule": (f"leave-one-out distance {rank} of {n_guard} local images the gate passes, counted from "
                               f"the lowest (split-conformal, {within:.0%} of familiar images within)" if enough else
                               f"the largest of {n_guard} leave-one-out distances of local images (a {within:.0%} "
                               f"guarantee needs at least {math.ceil(within / (1 - within) - 1e-9)})"),
            "fitted_on": f"whitening: the original training part; class means and threshold: {where}",
            "separation": {}, "familiar_test_share": familiar_share,
            "self_test_scores": None if fields is None else [
                float(v) for v in np.round(mahalanobis(field_features, new_statistics), 4)]}
        values["adaptation"] = {
            "head": "class means", "adapted_on": f"{Path(data).name}: {len(labels)} labelled images"[:80],
            "images": {c: int(n) for c, n in zip(classes, counts)}, "held_out": len(test),
            "prior_weight": prior_weight, "adapted_from": bundle.title[:80],
            "self_test_probabilities": None if fields is None else np.round(class_mean_probabilities(
                class_distances(field_features, new_statistics)), 6).tolist()}
        try:
            new_manifest = Manifest.model_validate(values)
        except ValidationError as error:
            raise ConversionError(f"the adapted manifest is not valid: {describe(error)}") from None
        write_manifest(building, new_manifest)
        values = _keep_agreeing_formats(building, values, old.format)
        new_manifest = Manifest.model_validate(values)
        before = after = {}
        reason_before = reason_after = None
        if len(test):
            new = ScreeningModel.open(building)
            held = [images[i] for i in test]
            (before, reason_before), (after, reason_after) = (_screen_held_out(m, held, labels[test], device)
                                                              for m in (old, new))
            new_manifest = Manifest.model_validate(values | {"adaptation": values["adaptation"] | {
                "before": before, "after": after}})
            write_manifest(building, new_manifest)
        if out.exists():
            raise ConversionError(f"{out} appeared while adapting: give a new folder for the adapted bundle")
        os.rename(building, out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    print(f"{out}: {bundle.title} adapted on {len(fit)} images of {Path(data)} "
          f"({', '.join(f'{n} {c}' for c, n in zip(classes, counts))}); version {new_manifest.version}")
    print(f"  temperature {calibration.temperature:.3g}, blast-score threshold {rule.threshold:.3g} "
          f"(refer at {rule.refer_at:.3g}), guard threshold {threshold:.4g}")
    if len(test):
        kind = "whole device pipeline" if manifest.input_kind == "field" else "model, guard and decision on the crops"
        print(f"held-out local images ({len(test)}; {kind}), before -> after (sensitivity: blast images not answered "
              "'No blasts suggested', a not-screened one included; specificity: non-blast images answered 'No "
              "blasts suggested'):")
        for key in MEASURES:
            print(f"  {key}: {_share(before[key])} -> {_share(after[key])}"
                  + (f" (main reason: {reason_before or '-'} -> {reason_after or '-'})" if key == "not_screened" else ""))
        worse = [key for key in ("sensitivity", "specificity", "class accuracy among screened")
                 if None not in (before[key], after[key]) and after[key] < before[key]]
        wrong = "confidently wrong among screened"
        if None not in (before[wrong], after[wrong]) and after[wrong] > before[wrong]:
            worse.append(f"more {wrong}")
        if worse:
            print(f"warning: the adapted bundle did worse than the original on the held-out images ({', '.join(worse)}):"
                  " look at the labels and the images before installing it")
    else:
        print("note: nothing was kept out to measure the adaptation (--held-out 0, or too few images per class)")
    return new_manifest


def _keep_agreeing_formats(building: Path, values: dict, fitted: str) -> dict:
    """The adapted manifest's values without the formats whose features the local class means do not fit (the
    head and the guard were fitted on the `fitted` format's features; a format that computes them differently
    fails the adapted self-test), those files removed; the manifest written again when one is left out."""
    bundle = load_bundle(building)
    refused = []
    for fmt in bundle.formats:
        if fmt == fitted:
            continue
        try:
            bundle.runner(RuntimeOptions(format=fmt))
        except RuntimeProblem:
            refused.append(fmt)
    if not refused:
        return values
    for fmt in refused:
        for name in format_file_names(bundle.manifest, fmt):
            (building / name).unlink(missing_ok=True)
        print(f"note: {fmt} left out of the adapted bundle: its features differ from {fitted}'s, on which the head and "
              "the guard were fitted, beyond the self-test's tolerance")
    values = without_formats(values, refused, fitted)
    write_manifest(building, Manifest.model_validate(values))
    return values


def _read_local(folder: Path, classes: list[str]) -> tuple[list[np.ndarray], np.ndarray, list[Path]]:
    """The local images, decoded (unreadable ones and copies of the same pixels skipped, with a note), their
    labels and their files."""
    paths, labels = local_images(folder, classes)
    images, kept, files, seen = [], [], [], {}
    for path, label in zip(paths, labels):
        try:
            rgb = read_image(path)
        except ImageReadError as error:
            print(f"skipped {path}: {error}")
            continue
        digest = hashlib.sha256(np.ascontiguousarray(rgb).tobytes() + str(rgb.shape).encode()).hexdigest()
        if digest in seen:   # a copy would sit on both sides of the held-out part
            print(f"skipped {path}: the same pixels as {seen[digest]}")
            continue
        seen[digest] = path
        images.append(rgb)
        kept.append(label)
        files.append(path)
    if len(kept) < SUGGESTED_IMAGES:
        print(f"note: {len(kept)} local images; about {SUGGESTED_IMAGES} are suggested (every figure below rests on "
              "few images)")
    return images, np.array(kept, dtype=int), files


def _gate_passes(images: list[np.ndarray], manifest: Manifest, device: DeviceConfig) -> np.ndarray:
    """Which local fields the device's quality gate passes (every image, for a cell bundle), said when not all: the
    head learns from them all, the guard's threshold only from those passed."""
    passed = np.ones(len(images), bool)
    if manifest.input_kind != "field":
        return passed
    scale = device.scale if device.scale.um_per_px else None
    reasons = Counter()
    for index, rgb in enumerate(images):
        try:
            report = analyse_field(rgb, device.cell_finder, device.quality, scale).quality
        except ValueError:
            continue
        if not report.passed:
            passed[index] = False
            reasons[reason_name(report.reasons[0])] += 1
    if reasons:
        print(f"note: the quality gate (these settings) refuses {sum(reasons.values())} of the {len(images)} local "
              f"fields ({', '.join(f'{n} {r}' for r, n in reasons.most_common())}); the device will not screen such "
              "fields; the head learns from them all, the guard's threshold from the others: check the gate's "
              "settings for this microscope (`--config`)")
    return passed


def _note_farthest(nearest: np.ndarray, screened: np.ndarray, files: list[Path], within: float) -> None:
    """With too few images for the conformal rank the threshold is the largest distance: name the image that sets
    it, so one unusual or mislabelled image is checked rather than trusted."""
    order = np.flatnonzero(screened)[np.argsort(nearest[screened])]
    farthest = order[-1]
    text = (f"note: too few local images for a {within:.0%} guard guarantee, so the guard's threshold is the "
            f"largest distance, that of {files[farthest]} ({nearest[farthest]:.4g}")
    if len(order) > 1 and nearest[farthest] > 1.5 * nearest[order[-2]]:
        text += (f", {nearest[farthest] / nearest[order[-2]]:.1f} times the next: check that image, another kind of "
                 "field or mislabelled? It alone lets every field up to that distance through")
    print(text + ")")


def _check_labels(probabilities: np.ndarray, labels: np.ndarray, manifest: Manifest, accept: bool) -> None:
    """The original model's agreement with the local labels; refused when it ranks the local blast images below the
    non-blast ones (labels swapped or wrong), unless `accept`."""
    from leukoscreen.convert.guard_builder import auroc
    negative = [manifest.class_names.index(n) for n in manifest.decision.negative_classes]
    blast = ~np.isin(labels, negative)
    scores = manifest.decision.score(probabilities, manifest.class_names)
    ranking = auroc(scores[~blast], scores[blast])
    agreement = float(np.mean(probabilities.argmax(axis=1) == labels))
    print(f"the original model on the local images: its class agrees with {agreement:.0%} of the labels; its blast "
          f"score ranks the blast images above the others with AUROC {ranking:.3f}")
    called = probabilities.argmax(axis=1)
    mostly = {}   # a local class whose images the original calls mostly one other class
    for i, name in enumerate(manifest.class_names):
        mine = called[labels == i]
        if len(mine):
            top = int(np.bincount(mine, minlength=len(manifest.class_names)).argmax())
            if top != i and np.mean(mine == top) > 0.5:
                mostly[i] = top
    for i, j in mostly.items():
        if i < j and mostly.get(j) == i:
            a, b = manifest.class_names[i], manifest.class_names[j]
            print(f"warning: the original model calls most local {a} images {b} and most {b} images {a}: check "
                  "that these two folders are not swapped (the blast score cannot tell)")
    if ranking < MIN_LABEL_AUROC and not accept:
        raise ConversionError(f"the original model ranks the local blast images above the non-blast ones with AUROC "
                              f"{ranking:.3f} only (below {MIN_LABEL_AUROC}): check the labels (a swapped folder gives "
                              "this); if they are right, this microscope needs a model trained on its images, not an "
                              "adapted head (--accept-disagreement adapts anyway)")


def _note_guard(threshold: float, original: float) -> None:
    if threshold < original / 2:
        print(f"warning: the guard's threshold fell to {threshold:.4g} (the original's {original:.4g}): the local images "
              "are far more alike than the training images (near-copies, or one slide?); the device will refuse "
              "most other fields")
    elif threshold > 1.5 * original:
        print(f"warning: the guard's threshold rose to {threshold:.4g} (the original's {original:.4g}): it lets more "
              "unlike images through, and its separation from other labs' images was not measured again (`leukoscreen "
              "robustness` on the new bundle does)")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
