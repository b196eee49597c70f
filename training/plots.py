"""Pictures people would rather look at than numbers: training curves, confusion matrix, ROC curves."""
from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay  # noqa: E402


def training_curves(history_csv: Path, out: Path) -> None:
    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy")):
        for prefix, label in (("", "train"), ("val_", "validation")):
            if rows[0].get(f"{prefix}{metric}", "NA") != "NA":  # no validation curve with the 80/20 hold-out
                axis.plot(epochs, [float(r[f"{prefix}{metric}"]) for r in rows], marker="o", label=label)
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def confusion(matrix: list[list[int]], class_names: list[str], out: Path, title: str = "") -> None:
    figure, axis = plt.subplots(figsize=(1.2 * len(class_names) + 3, 1.2 * len(class_names) + 2.5))
    ConfusionMatrixDisplay(np.array(matrix), display_labels=class_names).plot(ax=axis, colorbar=False)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def roc_curves(y_true, probabilities, class_names: list[str], out: Path, title: str = "") -> None:
    y_true, probabilities = np.asarray(y_true), np.asarray(probabilities)
    figure, axis = plt.subplots(figsize=(5, 5))
    shown = [len(class_names) - 1] if len(class_names) == 2 else range(len(class_names))
    for k in shown:
        if 0 < (y_true == k).sum() < len(y_true):
            RocCurveDisplay.from_predictions(y_true == k, probabilities[:, k], name=class_names[k], ax=axis)
    axis.plot([0, 1], [0, 1], "k:", linewidth=1)
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
