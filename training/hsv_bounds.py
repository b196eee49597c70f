"""`leukoscreen data hsv-bounds DIR`: propose the HSV bounds that keep the stained white cells (thesis
3.16 chose them by hand with a slider), and show the masks for a person to check.

Stained pixels are told from the background by their saturation (Otsu's threshold on the saturation of
all sampled pixels) and by a hue on the blue-to-magenta side (OpenCV hue 100-179); the proposed bounds
are the 1st-99th percentiles of those pixels' hue, the Otsu threshold up to 255 in saturation, and the
full value range. Images whose mask keeps almost nothing or almost everything are listed with the
bounds used.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from leukoscreen.edge.preprocessing import PreprocessConfig
from leukoscreen.edge.stain import hsv_mask, keep_stained
from leukoscreen.training.prepared_data import prepare, preprocessed_images

PURPLE_HUES = (100, 179)
TOO_LITTLE, TOO_MUCH = 0.002, 0.6


def read_bounds(path: str | Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The HSV bounds in a `hsv_bounds.json` written by `leukoscreen data hsv-bounds`."""
    try:
        values = json.loads(Path(path).read_text())
        return tuple(values["hsv_lower"]), tuple(values["hsv_upper"])
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{path}: not a hsv_bounds.json of `leukoscreen data hsv-bounds` ({error})") from error


def propose_bounds(images: np.ndarray, pixels_per_image: int = 2000, seed: int = 0) -> tuple[tuple, tuple]:
    rng = np.random.default_rng(seed)
    samples = []
    for image in images:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).reshape(-1, 3)
        samples.append(hsv[rng.choice(len(hsv), min(pixels_per_image, len(hsv)), replace=False)])
    hsv = np.concatenate(samples)
    threshold, _ = cv2.threshold(hsv[:, 1].reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    stained = hsv[(hsv[:, 1] > threshold) & (hsv[:, 0] >= PURPLE_HUES[0])]
    if len(stained) < 100:
        raise ValueError("too few stained (saturated, purple) pixels to propose bounds; check the images")
    hue_low, hue_high = np.percentile(stained[:, 0], [1, 99])
    return (int(hue_low), int(threshold), 0), (int(hue_high), 255, 255)


def hsv_bounds_report(data_dir: Path, out_dir: Path, task: str | None = None, per_class: int = 4,
                      lower: tuple | None = None, upper: tuple | None = None) -> dict:
    prepared = prepare(data_dir, task)
    config = PreprocessConfig(input_size=128)
    images = preprocessed_images(prepared.paths, prepared.sha256s, config)
    train = prepared.part("train")
    if lower is None or upper is None:
        lower, upper = propose_bounds(images[train])  # from the training part only
    kept = np.array([float(np.mean(hsv_mask(image, lower, upper) > 0)) for image in images])
    flagged = [{"path": prepared.paths[i], "kept_fraction": round(float(kept[i]), 4),
                "problem": "keeps almost nothing" if kept[i] < TOO_LITTLE else "keeps almost everything"}
               for i in np.flatnonzero((kept < TOO_LITTLE) | (kept > TOO_MUCH))]
    per_class_kept = {name: {"median": float(np.median(kept[prepared.labels == k])),
                             "min": float(kept[prepared.labels == k].min()),
                             "max": float(kept[prepared.labels == k].max())}
                      for k, name in enumerate(prepared.class_names)}
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for k, name in enumerate(prepared.class_names):
        members = np.flatnonzero(prepared.labels == k)
        for i in rng.choice(members, min(per_class, len(members)), replace=False):
            pair = np.hstack([images[i], keep_stained(images[i], lower, upper)])
            cv2.putText(pair, f"{name} {kept[i]:.1%}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 0), 1)
            rows.append(pair)
    grid = np.vstack([np.hstack(rows[r:r + 2]) if len(rows[r:r + 2]) == 2 else
                      np.hstack([rows[r], np.zeros_like(rows[r])]) for r in range(0, len(rows), 2)])
    cv2.imwrite(str(out_dir / "hsv_masks.png"), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
    summary = {"data": str(prepared.dataset.root), "hsv_lower": list(lower), "hsv_upper": list(upper),
               "proposed_from": "training part of the group split", "kept_fraction_per_class": per_class_kept,
               "flagged": flagged, "images": len(images)}
    (out_dir / "hsv_bounds.json").write_text(json.dumps(summary, indent=2))
    print(f"HSV bounds: lower {tuple(lower)}, upper {tuple(upper)}; median share kept per class: "
          + ", ".join(f"{n} {v['median']:.1%}" for n, v in per_class_kept.items()))
    print(f"{len(flagged)} images keep almost nothing or almost everything (listed in {out_dir / 'hsv_bounds.json'}); "
          f"masks to check: {out_dir / 'hsv_masks.png'}")
    return summary
