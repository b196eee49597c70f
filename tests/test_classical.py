"""Thesis Model 1 on generated images: frozen-backbone features, six classical classifiers, 10-fold-style
group cross-validation and the held-out test split."""
import json

import numpy as np

from leukoscreen.cli import main


def test_model1_table_from_pretrained_features(aria_like, tmp_path):
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
    assert bundle.manifest["input"]["size"] == 224 and bundle.manifest["preprocess"]["input_size"] == 224


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
