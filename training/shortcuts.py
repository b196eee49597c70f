"""`leukoscreen data shortcuts`: probes that see only what a model should not rely on.

Gradient boosting on six colour numbers per image (mean and standard deviation of R, G, B), on an HSV
colour histogram, on three focus numbers (sharpness), on the stained and dark share (size), and on one 32x32
patch alone (bottom-right, where all-aria's scale-bar label is; top-left
and centre as controls). Scored on the same leak-free group split as the models: if a probe scores high,
a model's score on that data says little about cell morphology.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

from leukoscreen.edge.cell_finder import stain_mask
from leukoscreen.edge.image_io import read_image
from leukoscreen.edge.preprocessing import lab_statistics, reinhard, standardize_colour, to_grayscale
from leukoscreen.training.cell_data import read_cell_geometry
from leukoscreen.training.metrics import classification_metrics
from leukoscreen.training.prepared_data import prepare

PROBE_SIZE = 224   # fields are resized to this side first (cell crops keep theirs), so patch positions mean
#                    the same everywhere
PATCH = 32


def colour_statistics(rgb: np.ndarray) -> np.ndarray:
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    return np.concatenate([pixels.mean(axis=0), pixels.std(axis=0)])


def colour_histogram(rgb: np.ndarray, bins: int = 16) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    ranges = (180, 256, 256)
    return np.concatenate([cv2.calcHist([hsv], [c], None, [bins], [0, ranges[c]]).ravel() / hsv[..., 0].size
                           for c in range(3)])


def patch(rgb: np.ndarray, where: str) -> np.ndarray:
    side = rgb.shape[0]
    start = {"bottom_right": (side - PATCH, side - PATCH), "top_left": (0, 0),
             "centre": ((side - PATCH) // 2, (side - PATCH) // 2)}[where]
    return rgb[start[0]:start[0] + PATCH, start[1]:start[1] + PATCH].astype(np.float32).ravel()


def sharpness(rgb: np.ndarray) -> np.ndarray:
    """Focus numbers: variance of the Laplacian, mean gradient magnitude, share of high-frequency energy."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = np.hypot(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1))
    high = gray - cv2.GaussianBlur(gray, (0, 0), 2)
    return np.array([cv2.Laplacian(gray, cv2.CV_32F).var(), gradient.mean(), high.var() / (gray.var() + 1e-6)])


def stained_area(rgb: np.ndarray) -> np.ndarray:
    """Size: the share of stained (purple) pixels and of dark pixels."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return np.array([np.mean(stain_mask(rgb) > 0), np.mean(gray < 100), np.mean(gray < 150)])


PROBES = {
    "colour_mean_std": colour_statistics,
    "sharpness": sharpness,
    "stained_area": stained_area,
    "colour_histogram": colour_histogram,
    "patch_bottom_right": lambda rgb: patch(rgb, "bottom_right"),
    "patch_top_left": lambda rgb: patch(rgb, "top_left"),
    "patch_centre": lambda rgb: patch(rgb, "centre"),
}


def shortcut_probes(data_dir: Path, out_dir: Path, task: str | None = None, block_size: int = 20,
                    seed: int = 0, n_boot: int = 200, colour: str = "rgb", probes: list[str] | None = None) -> dict:
    """colour "standardize", "reinhard" or "grayscale" transforms every image first, to see what is left of the
    colour shortcut after it; probes: a subset of PROBES (default all)."""
    unknown = set(probes or []) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probes {sorted(unknown)}; choose from {', '.join(PROBES)}")
    prepared = prepare(data_dir, task, block_size=block_size, seed=seed)
    side = read_cell_geometry(prepared.dataset.root)[0].pixels if prepared.dataset.kind == "cells" else PROBE_SIZE
    images = [cv2.resize(read_image(p), (side, side), interpolation=cv2.INTER_AREA) for p in prepared.paths]
    reference = ()
    if colour == "standardize":
        images = [standardize_colour(image) for image in images]
    elif colour == "reinhard":  # to the mean L*a*b* statistics of the training part
        reference = tuple(np.stack([lab_statistics(images[i]) for i in prepared.part("train")]).mean(axis=0))
        images = [reinhard(image, reference) for image in images]
    elif colour == "grayscale":
        images = [to_grayscale(image) for image in images]
    elif colour != "rgb":
        raise ValueError(f"colour {colour!r}: use rgb, standardize, reinhard or grayscale")
    fit_index = np.concatenate([prepared.part("train"), prepared.part("val")])
    test_index = prepared.part("test")
    groups = np.array([row.group for row in prepared.rows])
    results = {}
    for name, features_of in PROBES.items():
        if probes and name not in probes:
            continue
        features = np.stack([features_of(image) for image in images])
        probe = HistGradientBoostingClassifier(random_state=seed)
        probe.fit(features[fit_index], prepared.labels[fit_index])
        probabilities = probe.predict_proba(features[test_index])
        metrics = classification_metrics(prepared.labels[test_index], probabilities, prepared.class_names,
                                         groups=groups[test_index], n_boot=n_boot)
        results[name] = {"features": int(features.shape[1]), "accuracy": metrics["accuracy"],
                         "macro_f1": metrics["macro_f1"], "ci95": {k: metrics["ci95"][k]
                                                                   for k in ("accuracy", "macro_f1")}}
        print(f"{name:<20} {features.shape[1]:>5} features  accuracy {metrics['accuracy']:.3f}  "
              f"macro-F1 {metrics['macro_f1']:.3f} [{metrics['ci95']['macro_f1'][0]:.3f}-"
              f"{metrics['ci95']['macro_f1'][1]:.3f}]")
    summary = {"data": str(prepared.dataset.root), "task": prepared.task, "classes": prepared.class_names,
               "colour": colour,
               "split": f"stratified group split 60/20/20 (seed {seed}, blocks of {block_size}); probes fit "
                        "on train+validation, scored on test", "test_images": int(len(test_index)),
               "probes": results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "shortcuts.json").write_text(json.dumps(summary, indent=2))
    return summary
