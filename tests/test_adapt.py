"""Site adaptation: `leukoscreen adapt` refits the head, calibration and guard of a bundle on a site's own labelled
images (another acquisition), keeps the original bundle as it was, and the device reads the adapted head."""
import json
import re

import cv2
import numpy as np
import pytest

from leukoscreen.cli import main
from leukoscreen.convert.adapt import fit_class_means, stratified_split
from leukoscreen.edge.bundle import load_bundle
from leukoscreen.edge.guard import class_distances, class_mean_probabilities, fit_mahalanobis
from leukoscreen.edge.manifest import sha256_of
from leukoscreen.edge.preprocessing import preprocess
from leukoscreen.edge.screening import ScreeningModel

from conftest import smear_image, write_rgb


def _local_site(root, class_names, per_class=14, seed=3):
    """Another microscope: the generated smears, blurred and with a bluer stain, one folder per class."""
    rng = np.random.default_rng(seed)
    for index, name in enumerate(class_names):
        for number in range(per_class):
            rgb = smear_image(rng, blast=index == 1).astype(np.int16) + np.array([-25, 0, 25], np.int16)
            write_rgb(root / name / f"site-{number:02d}.png",
                      cv2.GaussianBlur(np.clip(rgb, 0, 255).astype(np.uint8), (0, 0), 1.2))
    return root


def test_adapt_writes_a_new_bundle_whose_head_the_device_reads(bundle, tmp_path, capsys):
    original = load_bundle(bundle)
    names = original.class_names
    before_hash = sha256_of(bundle / "manifest.json")
    local = _local_site(tmp_path / "site", names)
    # --accept-disagreement: the label check rests on the session's 2-epoch model, which may rank these generated
    # smears no better than chance (the check has a test of its own)
    assert main(["adapt", str(bundle), "--data", str(local), "--out", str(tmp_path / "adapted"),
                 "--bundle-version", "site-1", "--accept-disagreement"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "held-out local images (8; whole device pipeline), before -> after" in printed
    assert sha256_of(bundle / "manifest.json") == before_hash      # the original is not touched
    assert not list(tmp_path.glob(".adapted.adapting-*"))         # built beside OUT, renamed when complete
    assert (tmp_path / "adapted").stat().st_mode & 0o777 == 0o777 & ~_umask()   # a folder like any other
    adapted = load_bundle(tmp_path / "adapted")
    manifest = adapted.manifest
    assert manifest.version == "site-1" and manifest.adaptation.head == "class means"
    assert manifest.adaptation.images == {name: 10 for name in names} and manifest.adaptation.held_out == 8
    assert manifest.adaptation.adapted_from == original.title
    assert manifest.adaptation.before["n"] == manifest.adaptation.after["n"] == 8
    assert "local images" in manifest.calibration.fitted_on and "local images" in manifest.decision.chosen_on
    # the class means moved to the site's images; the whitening is the training data's
    old, new = original.guard_statistics, adapted.guard_statistics
    np.testing.assert_array_equal(old["projection"], new["projection"])
    assert not np.allclose(old["class_means"], new["class_means"])
    # the device's probabilities are the class-means head on the file's features, then the new temperature
    model = ScreeningModel.open(tmp_path / "adapted")
    images = np.stack([preprocess(smear_image(np.random.default_rng(i), i % 2 == 0), manifest.preprocess)
                       for i in range(4)])
    probabilities, scores = model._probabilities(images)
    features = model.runner.predict_all(images)[1][0]
    distances = class_distances(features, new)
    expected = manifest.calibration.apply(class_mean_probabilities(distances))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(scores, distances.min(axis=1), rtol=1e-5)
    # every format kept passes its self-test; one whose features the local class means do not fit is left out
    # with a note (a 2-epoch model's float and int8 features can differ that much), never kept to be refused later
    left_out = set(original.formats) - set(adapted.formats)
    assert manifest.default_format in adapted.formats and left_out == {
        fmt for fmt in original.formats if f"note: {fmt} left out of the adapted bundle" in printed}
    assert all((tmp_path / "adapted" / manifest.files[fmt].file).is_file() for fmt in adapted.formats)
    assert not any((tmp_path / "adapted" / original.manifest.files[fmt].file).exists() for fmt in left_out)
    assert main(["bundle", "check", str(tmp_path / "adapted")]) == 0
    capsys.readouterr()
    # a new guard would put the training class means back under the adapted head: refused
    assert main(["bundle", "guard", str(tmp_path / "adapted"), "--data", str(bundle.parent / "data")]) == 2
    assert "was adapted to" in capsys.readouterr().err


def test_adapt_refuses_local_data_it_cannot_fit_and_writes_nothing(bundle, tmp_path, capsys):
    names = load_bundle(bundle).class_names
    one_class = _local_site(tmp_path / "one", names[:1])
    assert main(["adapt", str(bundle), "--data", str(one_class), "--out", str(tmp_path / "a")]) == 2
    assert "at least 3 images of every class" in capsys.readouterr().err and not (tmp_path / "a").exists()
    wrong = _local_site(tmp_path / "wrong", [names[0], "Lymphocyte"])
    assert main(["adapt", str(bundle), "--data", str(wrong), "--out", str(tmp_path / "a")]) == 2
    assert "Lymphocyte: not a class of the bundle" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert main(["adapt", str(bundle), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a")]) == 2
    assert "no such folder" in capsys.readouterr().err
    good = _local_site(tmp_path / "good", names, per_class=5)
    (tmp_path / "taken").mkdir()
    assert main(["adapt", str(bundle), "--data", str(good), "--out", str(tmp_path / "taken")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["adapt", str(bundle), "--data", str(good), "--out", str(tmp_path / "a"), "--held-out", "1"]) == 2
    assert "held-out" in capsys.readouterr().err


def test_a_bundle_without_the_mahalanobis_guard_cannot_be_adapted(bundle, tmp_path, capsys):
    import shutil
    copy = tmp_path / "energy"
    shutil.copytree(bundle, copy)
    assert main(["bundle", "guard", str(copy), "--data", str(bundle.parent / "data"), "--method", "energy",
                 "--limit", "0"]) == 0
    local = _local_site(tmp_path / "site", load_bundle(bundle).class_names, per_class=5)
    assert main(["adapt", str(copy), "--data", str(local), "--out", str(tmp_path / "a")]) == 2
    assert "run `leukoscreen bundle guard`" in capsys.readouterr().err


def test_leave_one_out_distances_are_those_of_means_fitted_without_the_image():
    rng = np.random.default_rng(0)
    z, labels = rng.normal(size=(12, 5)), np.array([0] * 5 + [1] * 7)
    original = rng.normal(size=(2, 5))
    means, distances = fit_class_means(z, labels, original, prior_weight=2.0)
    np.testing.assert_allclose(means[1], (z[labels == 1].sum(axis=0) + 2 * original[1]) / 9, rtol=1e-5)
    for i in range(len(z)):
        others = np.delete(np.arange(len(z)), i)
        without, _ = fit_class_means(z[others], labels[others], original, prior_weight=2.0)
        np.testing.assert_allclose(distances[i], ((z[i] - without) ** 2).sum(axis=1), rtol=1e-4)


def test_the_class_means_head_is_the_shared_covariance_posterior():
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(0, 1, (50, 8)), rng.normal(3, 1, (50, 8))])
    labels = np.array([0] * 50 + [1] * 50)
    statistics = fit_mahalanobis(features, labels, components=8)
    probabilities = class_mean_probabilities(class_distances(features, statistics))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert (probabilities.argmax(axis=1) == labels).mean() > 0.95


def test_stratified_split_holds_out_a_share_of_each_class():
    labels = np.array([0] * 10 + [1] * 20)
    fit, kept = stratified_split(labels, 0.3, seed=0)
    assert sorted(np.bincount(labels[kept]).tolist()) == [3, 6] and len(set(fit) | set(kept)) == 30
    assert not set(fit) & set(kept)


def test_data_perturbed_writes_a_labelled_folder_of_one_split_part(bundle, tmp_path):
    out = tmp_path / "blurred"
    assert main(["data", "perturbed", "--bundle", str(bundle), "--data", str(bundle.parent / "data"), "--part", "val",
                 "--perturb", "blur (sigma 1.5)", "--limit", "6", "--out", str(out)]) == 0
    written = sorted(out.rglob("*.png"))
    assert len(written) == 6 and {p.parent.name for p in written} <= set(load_bundle(bundle).class_names)
    split = (bundle / "split.csv").read_text()
    assert all(p.stem in split for p in written)
    assert main(["data", "perturbed", "--bundle", str(bundle), "--data", str(bundle.parent / "data"),
                 "--perturb", "sepia", "--out", str(tmp_path / "x")]) == 2
    assert main(["data", "perturbed", "--bundle", str(bundle), "--data", str(bundle.parent / "data"),
                 "--perturb", "blur (sigma 1.5)", "--limit", "0", "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.writing-*"))


def test_an_adapted_manifest_needs_every_class_and_the_mahalanobis_guard(bundle):
    from leukoscreen.edge.manifest import Manifest
    values = json.loads((bundle / "manifest.json").read_text())
    values.pop("manifest_sha256", None)
    names = values["class_names"]
    values["adaptation"] = {"head": "class means", "adapted_on": "site", "images": {names[0]: 5}, "held_out": 0,
                            "prior_weight": 5.0, "adapted_from": "x 1"}
    with pytest.raises(ValueError, match="local images of every class"):
        Manifest.model_validate(values)


def test_swapped_labels_are_refused_and_nothing_beside_out_is_touched(bundle, tmp_path, capsys):
    names = load_bundle(bundle).class_names
    swapped = _local_site(tmp_path / "swapped", names[::-1])     # the blast-like smears in the benign folder
    (tmp_path / "a.partial").mkdir()                              # a user's folder that only looks like a leftover
    (tmp_path / "a.partial" / "notes.txt").write_text("mine")
    assert main(["adapt", str(bundle), "--data", str(swapped), "--out", str(tmp_path / "a")]) == 2
    assert "check the labels" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert (tmp_path / "a.partial" / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".a.adapting-*"))               # its own temporary folder is gone
    assert main(["adapt", str(bundle), "--data", str(swapped), "--out", str(bundle / "adapted")]) == 2
    assert "inside" in capsys.readouterr().err and not (bundle / "adapted").exists()


def test_class_means_that_do_not_belong_to_the_adapted_head_are_refused(bundle, tmp_path, capsys):
    import io

    from leukoscreen.edge.bundle import BundleError
    from leukoscreen.edge.guard import save_statistics
    names = load_bundle(bundle).class_names
    assert main(["adapt", str(bundle), "--data", str(_local_site(tmp_path / "site", names, per_class=6)),
                 "--out", str(tmp_path / "adapted"), "--accept-disagreement"]) == 0, capsys.readouterr().err
    folder = tmp_path / "adapted"
    with np.load(io.BytesIO((folder / "guard.npz").read_bytes())) as arrays:
        statistics = {key: arrays[key] for key in arrays.files}
    statistics["class_means"] = statistics["class_means"][::-1].copy()   # the classes' means swapped
    (folder / "guard.npz").write_bytes(save_statistics(statistics))
    values = json.loads((folder / "manifest.json").read_text())
    values.pop("manifest_sha256")
    values["guard"]["statistics"]["sha256"] = sha256_of(folder / "guard.npz")   # consistent hashes: a deliberate swap
    from conftest import write_manifest_values
    write_manifest_values(folder, values)
    with pytest.raises(BundleError, match="adapted head"):
        ScreeningModel.open(folder)


def test_two_folders_the_model_reads_the_other_way_round_are_named(bundle, capsys):
    """A swap the blast score cannot see (two blast classes) shows as each class's images called the other."""
    from leukoscreen.convert.adapt import _check_labels
    manifest = load_bundle(bundle).manifest
    labels = np.array([0, 0, 0, 1, 1, 1])
    reversed_ = np.eye(2)[1 - labels] * 0.8 + 0.1          # every image called the other class
    _check_labels(reversed_, labels, manifest, accept=True)
    assert "calls most local" in capsys.readouterr().out
    _check_labels(np.eye(2)[labels] * 0.8 + 0.1, labels, manifest, accept=True)
    assert "calls most local" not in capsys.readouterr().out


def _umask() -> int:
    import os
    mask = os.umask(0)
    os.umask(mask)
    return mask



def test_the_adapted_guard_is_fitted_on_what_the_gate_passes_and_names_an_outlier(bundle, tmp_path, capsys):
    """A local field the gate refuses never widens the guard (the device would not screen it); with too few images
    for the conformal rank the threshold is the largest distance, and the image that sets it is named."""
    names = load_bundle(bundle).class_names
    local = _local_site(tmp_path / "site", names)
    write_rgb(local / names[0] / "refused.png", np.full((224, 224, 3), 30, np.uint8))     # dark: refused
    assert main(["adapt", str(bundle), "--data", str(local), "--out", str(tmp_path / "adapted"), "--held-out", "0",
                 "--accept-disagreement"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    refused, total = map(int, re.search(r"the quality gate \(these settings\) refuses (\d+) of the (\d+)", printed).groups())
    assert total == 14 * len(names) + 1 and refused >= 1 and "the guard's threshold from the others" in printed
    rule = load_bundle(tmp_path / "adapted").manifest.guard.threshold_rule
    assert f"the largest of {total - refused} leave-one-out distances" in rule
    farthest = re.search(r"the guard's threshold is the largest distance, that of (\S+) \(", printed).group(1)
    assert "site-" in farthest and "refused.png" not in farthest
