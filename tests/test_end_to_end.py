"""Train, evaluate and report on generated images (and on a handful of real ones when present)."""
import json
import shutil

import cv2
import numpy as np
import pytest

from leukoscreen.cli import main
from leukoscreen.edge.image_io import read_image
from leukoscreen.edge.preprocessing import PreprocessConfig, preprocess
from leukoscreen.training.prepared_data import prepare, preprocessed_images
from leukoscreen.training.runs import RunFolder, TrainConfig
from leukoscreen.training.train import train

QUICK = dict(epochs=2, batch_size=8, patience=2, block_size=3)


def test_training_pipeline_feeds_exactly_the_device_preprocessing(aria_like):
    from leukoscreen.training.input_pipeline import image_dataset
    config = PreprocessConfig(mask_corner=0.15)
    prepared = prepare(aria_like, block_size=3)
    images = preprocessed_images(prepared.paths, prepared.sha256s, config)
    batches = np.concatenate([b.numpy() for b in image_dataset(images, batch_size=7)])
    device = np.stack([preprocess(read_image(p), config) for p in prepared.paths]).astype(np.float32)
    assert batches.dtype == np.float32 and np.array_equal(batches, device)
    again = preprocessed_images(prepared.paths, prepared.sha256s, config)  # from the cache
    assert np.array_equal(again, images)


def test_train_evaluate_report_on_generated_images(aria_like, tmp_path):
    run = tmp_path / "run"
    metrics = train(TrainConfig(data=str(aria_like), schedule="cosine", **QUICK), run, n_boot=20)
    folder = RunFolder(run)
    for name in ("model.keras", "split.csv", "history.csv", "metrics.json", "config.json",
                 "training_curves.png", "confusion.png", "roc.png", "summary.md", "predictions.csv"):
        assert (run / name).exists(), name
    assert folder.config().task == "subtype"
    assert set(metrics["variants"]) == {"corner_masked", "corner_unmasked", "colour_standardized", "grayscale"}
    assert metrics["n"] == sum(row == "test" for row in
                               [line.split(",")[-1] for line in (run / "split.csv").read_text().split()[1:]])
    saved = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= saved["macro_f1"] <= 1.0 and "per_class" in saved and "timing_seconds" in saved
    assert "Research use only" in (run / "summary.md").read_text()

    assert main(["evaluate", str(run), "--out", str(tmp_path / "eval"), "--bootstrap", "10"]) == 0
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["confusion_matrix"] == saved["confusion_matrix"]  # same split, same model

    other = tmp_path / "other"  # another folder with the same classes: every image is evaluated
    shutil.copytree(aria_like, other)
    assert main(["evaluate", str(run), "--data", str(other), "--out", str(tmp_path / "eval2"),
                 "--bootstrap", "10"]) == 0
    assert json.loads((tmp_path / "eval2" / "metrics.json").read_text())["n"] == 60

    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.md").read_text()
    assert "Grad-CAM" in page and (tmp_path / "report" / "run-gradcam.png").exists()
    image = next(aria_like.rglob("*.jpg"))
    assert main(["explain", str(run), str(image), "--out", str(tmp_path / "explain")]) == 0
    overlay = cv2.imread(str(next((tmp_path / "explain").glob(f"{image.stem}-gradcam-*.png"))))
    assert overlay.shape == (128, 256, 3)  # the model input beside its heat map
    assert "Research use only" in page and "80.91%" in page and run.name in page
    assert (tmp_path / "report" / "report.html").exists()


def test_cosine_schedule_decays_to_zero_over_all_epochs():
    from leukoscreen.training.train import learning_rate_for
    config = TrainConfig(data="unused", schedule="cosine", epochs=3, batch_size=8, learning_rate=1e-3)
    schedule = learning_rate_for(config, train_images=20)  # 3 steps per epoch
    assert float(schedule(0)) == pytest.approx(1e-3) and float(schedule(9)) == pytest.approx(0.0, abs=1e-9)
    assert float(schedule(4)) == pytest.approx(5e-4, rel=0.2)
    assert learning_rate_for(TrainConfig(data="unused"), 20) == 1e-3
    with pytest.raises(ValueError, match="schedule 'linear': use constant or cosine"):
        learning_rate_for(TrainConfig(data="unused", schedule="linear"), 20)


def test_real_images_end_to_end(shared_data, tmp_path):
    """A few dozen real all-aria fields from 4 blocks per class, binary task, one epoch."""
    subset = tmp_path / "aria"
    for cls in ("Benign", "Early"):
        files = sorted((shared_data / "all-aria" / cls).glob("*.jpg"))[:40]
        (subset / cls).mkdir(parents=True)
        for path in files:
            shutil.copy(path, subset / cls / path.name)
    metrics = train(TrainConfig(data=str(subset), task="binary", epochs=1, batch_size=16, block_size=5),
                    tmp_path / "run", n_boot=20)
    assert metrics["class_names"] == ["benign", "malignant"] and metrics["n"] > 0


def test_cli_errors_are_messages_not_tracebacks(aria_like, tmp_path, capsys):
    assert main(["train", "--data", str(aria_like), "--model", "resnet-9000", "--out",
                 str(tmp_path / "r")]) == 2
    assert "unknown model 'resnet-9000'" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 2
    assert "train first" in capsys.readouterr().err


def test_corrupt_files_are_skipped_and_reported(aria_like, tmp_path, capsys):
    (aria_like / "Early" / "WBC-Malignant-Early-099.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    prepared = prepare(aria_like, block_size=3)
    assert len(prepared.rows) == 60 and len(prepared.skipped) == 1
    assert "WBC-Malignant-Early-099.jpg: the JPEG is truncated" in capsys.readouterr().out


def test_balanced_validation_weights_each_image_by_its_class():
    """Sample weights travel with their images through shuffling, and Keras's loss uses them."""
    import keras

    from leukoscreen.training.input_pipeline import image_dataset
    images = np.arange(12, dtype=np.uint8).repeat(4 * 4 * 3).reshape(12, 4, 4, 3)
    labels = np.array([0] * 3 + [1] * 9)
    weights = np.array([2.0, 2 / 3])[labels]  # "balanced": n / (classes * count)
    batches = list(image_dataset(images, labels.astype("float32")[:, None], 5, training=True, seed=3,
                                 sample_weights=weights))
    assert all(len(batch) == 3 for batch in batches)
    x, y, w = (np.concatenate([b[k].numpy() for b in batches]) for k in range(3))
    assert sorted(x[:, 0, 0, 0].tolist()) == list(range(12)) and not np.array_equal(x[:, 0, 0, 0], np.arange(12))
    assert np.array_equal(w, np.array([2.0, 2 / 3], dtype=np.float32)[y[:, 0].astype(int)])
    assert np.array_equal(y[:, 0], (x[:, 0, 0, 0] >= 3).astype(np.float32))
    constant = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(dtype="float32"),
                                 keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros", dtype="float32",
                                                    bias_initializer=keras.initializers.Constant(2.0))])
    constant.compile(loss="binary_crossentropy")
    p = 1 / (1 + np.exp(-2.0))
    per_image = np.where(labels == 1, -np.log(p), -np.log(1 - p))
    balanced = constant.evaluate(image_dataset(images, labels.astype("float32")[:, None], 5,
                                               sample_weights=weights), verbose=0)
    plain = constant.evaluate(image_dataset(images, labels.astype("float32")[:, None], 5), verbose=0)
    assert balanced == pytest.approx(np.sum(per_image * weights) / len(labels), rel=1e-4)
    assert plain == pytest.approx(per_image.mean(), rel=1e-4) and balanced > plain
