"""Thesis Model 1 on generated images: frozen-backbone features, six classical classifiers, 10-fold-style
group cross-validation and the held-out test split."""
import json

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
