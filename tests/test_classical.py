"""Thesis Model 1 on generated images: frozen-backbone features, six classical classifiers, 10-fold-style
group cross-validation and the held-out test split."""
import json
import subprocess
import sys

import numpy as np
import pytest

from leukoscreen.cli import main

from conftest import BLOCK_DESKTOP_IMPORTS, write_manifest_values


def test_model1_table_from_pretrained_features(aria_like, tmp_path, capsys):
    out = tmp_path / "model1"
    assert main(["classical", "--data", str(aria_like), "--backbone", "mobilenet-v2", "--folds", "3",
                 "--block-size", "3", "--bootstrap", "20", "--out", str(out)]) == 0
    summary = json.loads((out / "classical.json").read_text())
    assert set(summary["classifiers"]) == {"Decision tree (max 20 splits)", "Linear discriminant", "SVM linear",
                                           "SVM Gaussian", "SVM cubic", "K-NN (k=1)"}
    assert summary["feature_size"] == 1280 and summary["n"] == 60
    for result in summary["classifiers"].values():
        assert result["cross_validation"]["n"] == 60  # every image predicted once, by a model that never saw it
        assert 0 <= result["test_split"]["macro_f1"] <= 1
    # ImageNet features separate the round blast-like nuclei from the lobed ones
    assert summary["classifiers"]["SVM linear"]["cross_validation"]["accuracy"] >= 0.9
    from leukoscreen.training.report import classical_rows
    assert len(classical_rows(out)) == 6
    table = (out / "classical.md").read_text()
    assert "| SVM cubic |" in table and "3-fold group cross-validation" in table

    # the device's two-stage bundle: features (TFLite int8 / ONNX), then the classifier (skl2onnx)
    from leukoscreen.edge.bundle import BundleError, load_bundle
    bundle_dir = tmp_path / "bundle"
    assert main(["convert", str(out), "--classifier", "SVM linear", "--formats", "tflite-int8,onnx-fp32",
                 "--representative", "10", "--allow-accuracy-drop", "--out", str(bundle_dir)]) == 0
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["training"]["classifier"] == "SVM linear" and manifest["output"] == "softmax"
    for fmt in ("tflite-int8", "onnx-fp32"):  # each format's classifier learnt that format's features
        assert manifest["files"][fmt]["classifier"]["file"] == f"classifier-{fmt}.onnx"
    # ONNX float features + the ONNX classifier give the desktop's answers
    assert manifest["metrics"]["onnx-fp32"]["top1_agreement"] == 1.0
    assert manifest["metrics"]["onnx-fp32"]["max_probability_difference"] < 1e-3
    code = BLOCK_DESKTOP_IMPORTS + f"""
import numpy as np
from leukoscreen.edge.bundle import load_bundle
from leukoscreen.edge.runtimes import RuntimeOptions
bundle = load_bundle({str(bundle_dir)!r})
x = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), np.uint8)
for fmt in bundle.formats:
    p = bundle.runner(RuntimeOptions(format=fmt)).predict(x)
    assert p.shape == (2, 2) and np.allclose(p.sum(axis=1), 1), (fmt, p)
print('two-stage ran', len(bundle.formats))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("two-stage ran 2")
    with open(bundle_dir / "classifier-tflite-int8.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="classifier-tflite-int8.onnx does not match its sha256"):
        load_bundle(bundle_dir)
    manifest["files"]["tflite-int8"]["classifier"]["file"] = "classifier.pkl"  # only ONNX, never a pickle
    write_manifest_values(bundle_dir, manifest)
    with pytest.raises(BundleError, match="must be an .onnx file"):
        load_bundle(bundle_dir)
    assert main(["convert", str(out), "--classifier", "SVM quartic", "--out", str(tmp_path / "other")]) == 2
    assert "classifier 'SVM quartic' is not in" in capsys.readouterr().err


def test_model2_fine_tunes_a_pretrained_backbone_and_converts(aria_like, tmp_path):
    """Thesis Model 2: new head on a frozen ImageNet backbone, then its top layers; the run converts to a
    bundle that the device runtime evaluates."""
    from leukoscreen.convert.bundle_builder import convert_run
    from leukoscreen.edge.bundle import load_bundle
    run = tmp_path / "run"
    assert main(["train", "--data", str(aria_like), "--model", "efficientnet-lite0", "--epochs", "1",
                 "--head-epochs", "1", "--batch-size", "8", "--block-size", "3", "--bootstrap", "10",
                 "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["weights"] == "imagenet" and config["train"]["learning_rate"] == 1e-4
    assert config["train"]["preprocess"]["input_size"] == 224
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["macro_f1"] <= 1 and metrics["epochs_run"] == 1
    convert_run(run, tmp_path / "bundle", ["tflite-int8"], representative=10, allow_drop=True)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.manifest.input.size == 224 and bundle.manifest.preprocess.input_size == 224


def test_thesis_augmentation_stays_in_its_ranges():
    import tensorflow as tf

    from leukoscreen.training.input_pipeline import thesis_augment_batch
    image = np.zeros((16, 129, 129, 3), np.float32)
    image[:, 62:67, 62:67] = 255.0  # a bright square at the centre: rotation and reflection keep it there
    moved = thesis_augment_batch(tf.constant(image), tf.random.Generator.from_seed(0)).numpy()
    for picture in moved:
        ys, xs = np.nonzero(picture[..., 0] > 128)
        dy, dx = abs(ys.mean() - 64), abs(xs.mean() - 64)
        assert 14 <= dx <= 26 and 14 <= dy <= 26, (dx, dy)  # 15-25 px either way on each axis


def test_thesis_preset_trains_on_80_percent_and_tests_on_the_same_part(aria_like, tmp_path):
    assert main(["train", "--data", str(aria_like), "--preset", "thesis", "--block-size", "3", "--bootstrap", "10",
                 "--out", str(tmp_path / "thesis")]) == 0
    config = json.loads((tmp_path / "thesis" / "config.json").read_text())["train"]
    assert (config["learning_rate"], config["batch_size"], config["epochs"]) == (1e-4, 5, 6)
    assert config["holdout"] and config["augmentation"] == "thesis"
    metrics = json.loads((tmp_path / "thesis" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 6 and metrics["val_accuracy"] is None  # fixed epochs, no early stopping
    split = (tmp_path / "thesis" / "split.csv").read_text()
    assert split.count(",test") == metrics["n"]  # the test part is the group split's, untouched
