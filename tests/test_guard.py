"""The unfamiliar-image guard: the model files' extra outputs, the fitted statistics and threshold, the device's
"Not screened: unlike the images this model was made for", and a guard that does not fit its files."""
import json
import shutil

import numpy as np
import pytest

from leukoscreen.cli import main
from leukoscreen.edge.bundle import BundleError, load_bundle
from leukoscreen.edge.field_analysis import analyse_field
from leukoscreen.edge.guard import fit_mahalanobis, mahalanobis, save_statistics
from leukoscreen.edge.manifest import guard_scores_agree, sha256_of
from leukoscreen.edge.preprocessing import preprocess
from leukoscreen.edge.runtimes import RuntimeOptions, RuntimeProblem
from leukoscreen.edge.sample_summary import summarize
from leukoscreen.edge.screening import ScreeningModel, screen

from conftest import ALL_FORMATS, left_out_formats, smear_image, write_manifest_values


def test_every_format_outputs_what_the_guard_reads(bundle):
    loaded = load_bundle(bundle)
    guard, statistics = loaded.manifest.guard, loaded.guard_statistics
    assert guard.method == "mahalanobis" and guard.features_from == loaded.manifest.default_format
    assert statistics["projection"].shape == (statistics["mean"].shape[0], guard.components)
    assert guard.separation and all(0 <= a <= 1 for s in guard.separation.values() for a in s.values())
    x = np.stack([preprocess(smear_image(np.random.default_rng(i), i % 2 == 0), loaded.preprocess) for i in range(4)])
    scores = {}
    for fmt in loaded.formats:
        runner = loaded.runner(RuntimeOptions(format=fmt))  # self-tested: the probabilities are the converter's
        probabilities, extra = runner.predict_all(x)
        assert loaded.manifest.files[fmt].guard_outputs and len(extra) == 2
        assert extra[0].shape == (4, statistics["mean"].shape[0]) and extra[1].shape == (4, 1)  # features, logits
        scores[fmt] = guard.score(extra, statistics)
    # every format computes one network: their guard scores agree (int8 formats with each other roughly)
    left_out = left_out_formats((bundle.parent / "convert.log").read_text())
    assert set(loaded.formats) == set(ALL_FORMATS) - left_out
    for same in (("tflite-fp32", "onnx-fp32", 1e-3), ("tflite-int8", "onnx-int8", 0.1)):
        if not left_out & set(same[:2]):
            np.testing.assert_allclose(scores[same[0]], scores[same[1]], rtol=same[2])


def test_the_device_refuses_an_image_unlike_its_training_images(bundle):
    model = ScreeningModel.open(bundle)
    guard = model.guard
    rng = np.random.default_rng(5)
    familiar = [smear_image(rng, blast) for blast in (True, False, True, False)]
    unlike = [np.full((240, 240, 3), 128, np.uint8), np.zeros((240, 240, 3), np.uint8), 255 - familiar[0]]
    # (not pixel noise: a 2-epoch model on generated smears can place it among their features)
    answers = [model.classify(rgb, analyse_field(rgb)) for rgb in familiar + unlike]
    for answer in answers:  # the decision is the guard's exactly when the score is above the threshold
        assert (answer.decision == "unfamiliar") == (answer.guard_score > guard.threshold)
        if answer.decision == "unfamiliar":
            assert answer.message.startswith("Not screened: unlike the images this model was made for")
            assert "Research use only" in answer.message
            assert answer.blast_score is None and not answer.probabilities   # no numbers that read as a finding
    assert sum(a.decision == "unfamiliar" for a in answers[:4]) <= 1
    assert all(a.decision == "unfamiliar" for a in answers[4:])   # grey, black, colours inverted


def test_a_stored_unfamiliar_answer_is_served_as_stored(bundle, tmp_path):
    from leukoscreen.edge.result_store import ResultStore
    model = ScreeningModel.open(bundle)
    record = screen(np.full((240, 240, 3), 128, np.uint8), model, quality=_permissive())
    assert record.decision == "unfamiliar" and record.guard_score > model.guard.threshold
    assert record.blast_score is None and not record.probabilities
    store = ResultStore(tmp_path / "state")
    stored = store.add(record.model_copy(update={"sample_id": "S-1"}), np.full((240, 240, 3), 128, np.uint8))
    (row,) = store.captures("S-1")
    assert row["decision"] == "unfamiliar" and store.record(row).guard_score == stored.guard_score
    summary = summarize("S-1", [row])
    assert summary.decision == "not_screened" and summary.fields["unfamiliar"] == 1 and summary.screened_fields == 0
    store.close()


def _permissive():
    from leukoscreen.edge.quality import QualityConfig
    return QualityConfig(min_focus=0.0, max_dark_fraction=1.0, max_clipped_fraction=1.0, max_blockiness=0.0,
                         max_noise=0.0, min_stain_fraction=0.0, min_cells=0)


def test_guard_statistics_that_are_changed_or_do_not_fit_are_refused(bundle, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(bundle, changed)
    (changed / "guard.npz").write_bytes((changed / "guard.npz").read_bytes()[:-10] + b"0" * 10)
    with pytest.raises(BundleError, match="guard.npz does not match its sha256"):
        load_bundle(changed)
    misfit = tmp_path / "misfit"
    shutil.copytree(bundle, misfit)
    width = load_bundle(bundle).guard_statistics["mean"].shape[0]
    rng = np.random.default_rng(0)
    statistics = fit_mahalanobis(rng.normal(size=(50, width + 3)), np.arange(50) % 2, 4)
    (misfit / "guard.npz").write_bytes(save_statistics(statistics))
    values = json.loads((misfit / "manifest.json").read_text())
    values["guard"]["statistics"]["sha256"] = sha256_of(misfit / "guard.npz")
    values["guard"]["components"] = 4
    write_manifest_values(misfit, values)
    with pytest.raises(RuntimeProblem, match=f"the guard reads {width + 3} features per image; the model file gives "
                                             f"{width}"):
        load_bundle(misfit).runner()
    (misfit / "guard.npz").write_bytes(b"PK not an npz")
    values["guard"]["statistics"]["sha256"] = sha256_of(misfit / "guard.npz")
    write_manifest_values(misfit, values)
    with pytest.raises(BundleError, match="not a guard statistics file"):
        load_bundle(misfit).runner()


def test_bundle_guard_fits_another_method_into_a_bundle(bundle, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    data = bundle.parent / "data"
    assert main(["bundle", "guard", str(copy), "--data", str(data), "--method", "energy", "--limit", "8",
                 "--bundle-version", "2-energy"]) == 0
    out = capsys.readouterr().out
    assert "AUROC mahalanobis" in out and "energy" in out and "guard (energy): threshold" in out
    guarded = load_bundle(copy)
    assert guarded.manifest.version == "2-energy" and guarded.manifest.guard.method == "energy"
    assert guarded.manifest.guard.statistics is None and guarded.guard_statistics is None
    assert guarded.manifest.guard.familiar_test_share >= 0.5
    # the model files were already guarded: they are the same files
    assert all(guarded.manifest.files[f].sha256 == load_bundle(bundle).manifest.files[f].sha256 for f in guarded.formats)
    assert main(["bundle", "check", str(copy)]) == 0
    assert "unfamiliar-image guard: energy" in capsys.readouterr().out
    assert main(["bundle", "guard", str(copy), "--data", str(tmp_path / "nowhere")]) == 2
    assert "missing under" in capsys.readouterr().err


def test_a_format_the_guard_does_not_fit_is_left_out_with_a_note(bundle, tmp_path, capsys, monkeypatch):
    """A format whose guard scores on the self-test fields are not the fitted format's (a weak model's dynamic-range
    file can compute features that far off) would be refused by the device: `bundle guard` (and so `convert`)
    leaves it out, its file removed, and the bundle left passes its check."""
    import leukoscreen.convert.guard_builder as guard_builder
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    original = load_bundle(bundle)
    other = next(f for f in original.formats if f != original.manifest.default_format)
    calls = []

    def first_other_disagrees(method, scores, expected):
        calls.append(method)
        return len(calls) > 1 and guard_scores_agree(method, scores, expected)
    monkeypatch.setattr(guard_builder, "guard_scores_agree", first_other_disagrees)
    assert main(["bundle", "guard", str(copy), "--data", str(bundle.parent / "data"), "--limit", "4"]) == 0
    assert f"note: {other} left out of the bundle: its guard scores" in capsys.readouterr().out
    guarded = load_bundle(copy)
    assert other not in guarded.formats and set(guarded.formats) | {other} == set(original.formats)
    assert not (copy / original.manifest.files[other].file).exists()
    monkeypatch.undo()
    assert main(["bundle", "check", str(copy)]) == 0


def test_the_mahalanobis_distance_grows_away_from_the_classes():
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(0, 1, (200, 6)), rng.normal(4, 1, (200, 6))])
    statistics = fit_mahalanobis(features, np.repeat([0, 1], 200), 6, shrinkage=0.0)
    near, far = mahalanobis(np.array([[0.0] * 6, [4.0] * 6]), statistics), mahalanobis(np.full((1, 6), 12.0),
                                                                                          statistics)
    assert near.max() < 2 and far[0] > 100   # squared whitened distance: about 6 * 8^2 from the nearest class


def _npz(members: dict[str, bytes]) -> bytes:
    import io
    import zipfile
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_hostile_statistics_files_are_refused_without_reading_them_whole():
    from leukoscreen.edge.guard import load_statistics
    good = {"mean": _npy(np.zeros(8, np.float32)), "projection": _npy(np.eye(8, 4, dtype=np.float32)),
            "class_means": _npy(np.zeros((2, 4), np.float32))}
    assert load_statistics(_npz(good), 4)["projection"].shape == (8, 4)
    huge_header = _npy(np.zeros(8, np.float32)).replace(b"(8,)", b"(1000000000000,)")   # 4 TB declared
    zeros = {"mean": b"\x93NUMPY" + _npy(np.zeros(20_000_000, np.float32))[6:]}        # 80 MB of zeros, deflated
    cases = {"empty": b"", "not a zip": b"PK\x03\x04 garbage", "huge header": _npz(good | {"mean": huge_header}),
             "deflated 80 MB": _npz(good | zeros), "pickled objects": _npz(good | {"mean": _npy(np.array([{}]))}),
             "integers": _npz(good | {"mean": _npy(np.zeros(8, np.int64))}),
             "no components": _npz(good | {"projection": _npy(np.zeros((8, 0), np.float32)),
                                           "class_means": _npy(np.zeros((2, 0), np.float32))}),
             "all-zero projection": _npz(good | {"projection": _npy(np.zeros((8, 4), np.float32))}),
             "NaN": _npz(good | {"mean": _npy(np.full(8, np.nan, np.float32))})}
    for what, content in cases.items():
        with pytest.raises(ValueError, match="guard statistics"):
            load_statistics(content, 4)
            pytest.fail(f"{what}: accepted")
    with pytest.raises(ValueError, match="with the manifest's components"):
        load_statistics(_npz(good), 5)


def test_bundle_guard_refuses_options_that_mean_nothing(bundle, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    (copy / "new-model-int8.tflite").write_bytes(b"left by an interrupted run")
    before = (copy / "manifest.json").read_bytes()
    for option in (["--within", "0"], ["--within", "1.5"], ["--components", "0"], ["--limit", "-1"]):
        assert main(["bundle", "guard", str(copy), "--data", str(bundle.parent / "data"), *option]) == 2
        assert "error:" in capsys.readouterr().err
    assert (copy / "manifest.json").read_bytes() == before
    assert main(["bundle", "guard", str(copy), "--data", str(bundle.parent / "data"), "--limit", "0"]) == 0
    assert "the separation was not measured" in capsys.readouterr().out
    assert not list(copy.glob("new-*")) and load_bundle(copy).manifest.guard.self_test_scores
