"""Grad-CAM (Selvaraju et al., 2017) for any convolutional model of a run: where in the field the model
looked for the class it predicted. `leukoscreen explain RUN IMAGE...` writes overlays; `explain_grid`
draws true positives, false positives and false negatives of the test split for the report.

"Positive" is a blast class (any class other than the run's negative class, Benign by default).
"""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

from leukoscreen.edge.image_io import read_image
from leukoscreen.edge.preprocessing import preprocess
from leukoscreen.training.runs import RunFolder


def last_conv_layer(model) -> str:
    """The last layer with a spatial (4-D) output that is not pooling or padding."""
    import keras
    skip = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.ZeroPadding2D,
            keras.layers.GlobalAveragePooling2D)
    for layer in reversed(model.layers):
        if len(layer.output.shape) == 4 and not isinstance(layer, skip):
            return layer.name
    raise ValueError(f"{model.name} has no convolutional layer for Grad-CAM")


def gradcam(model, image: np.ndarray, class_index: int | None = None, layer: str | None = None
            ) -> tuple[np.ndarray, int, float]:
    """Heat map (H x W, 0-1, the input's size) for one preprocessed uint8 image; the class explained
    (default: the predicted one) and its probability."""
    import keras
    import tensorflow as tf
    layer = layer or last_conv_layer(model)
    probe = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    batch = tf.convert_to_tensor(image[None].astype(np.float32))
    with tf.GradientTape() as tape:
        maps, output = probe(batch, training=False)
        if output.shape[-1] == 1:  # a sigmoid: class 1 is p, class 0 is 1 - p
            probabilities = tf.concat([1 - output, output], axis=-1)
        else:
            probabilities = output
        if class_index is None:
            class_index = int(tf.argmax(probabilities[0]))
        score = probabilities[:, class_index]
    gradients = tape.gradient(score, maps)[0]
    weights = tf.reduce_mean(gradients, axis=(0, 1))
    cam = tf.nn.relu(tf.reduce_sum(maps[0] * weights, axis=-1)).numpy()
    cam = cam / cam.max() if cam.max() > 0 else cam
    heat = cv2.resize(cam.astype(np.float32), image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    return heat, class_index, float(probabilities[0, class_index])


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    colours = cv2.cvtColor(cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return (image * (1 - alpha) + colours * alpha).astype(np.uint8)


def explain_images(run_path: Path, images: list[Path], out: Path) -> list[Path]:
    run = RunFolder(run_path)
    config = run.config()
    model = run.load_model()
    classes = run.extra()["class_names"]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        image = preprocess(read_image(path), config.preprocess)
        heat, index, probability = gradcam(model, image)
        target = out / f"{Path(path).stem}-gradcam-{classes[index]}.png"
        picture = np.hstack([image, overlay(image, heat)])
        cv2.imwrite(str(target), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        print(f"{path}: {classes[index]} ({probability:.2f}) -> {target}")
        written.append(target)
    return written


def explain_grid(run_path: Path, out_png: Path, per_kind: int = 4, negative: str = "Benign") -> Path | None:
    """A figure of Grad-CAM overlays: true positives, false positives and false negatives of the test
    split (blast classes vs the negative class), the most confident of each first."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    run = RunFolder(run_path)
    with open(run.path / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    classes = run.extra()["class_names"]
    if negative not in classes:
        negative = classes[0]

    def confidence(row):
        return float(row[f"p_{row['predicted']}"])

    kinds = {"true positive": [r for r in rows if r["true"] != negative and r["predicted"] != negative],
             "false positive": [r for r in rows if r["true"] == negative and r["predicted"] != negative],
             "false negative": [r for r in rows if r["true"] != negative and r["predicted"] == negative]}
    kinds = {k: sorted(v, key=confidence, reverse=True)[:per_kind] for k, v in kinds.items()}
    if not any(kinds.values()):
        return None
    config, model = run.config(), run.load_model()
    figure, axes = plt.subplots(3, per_kind, figsize=(2.6 * per_kind, 8.4), squeeze=False)
    for row_axes, (kind, chosen) in zip(axes, kinds.items()):
        for column, ax in enumerate(row_axes):
            ax.axis("off")
            if column >= len(chosen):
                continue
            row = chosen[column]
            image = preprocess(read_image(row["path"]), config.preprocess)
            heat, _, probability = gradcam(model, image, classes.index(row["predicted"]))
            ax.imshow(overlay(image, heat))
            ax.set_title(f"{kind}\ntrue {row['true']}, said {row['predicted']} {probability:.2f}", fontsize=8)
    figure.suptitle(f"Grad-CAM, test split of {run.path.name} (research use only)", fontsize=10)
    figure.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=90)
    plt.close(figure)
    return out_png
