"""`leukoscreen cells`: how well the device's cell finder does.

On generated fields, where every white cell's position is known: precision and recall of the boxes
(a found box matches a true cell when their intersection over union is at least 0.3). On a real data
folder, where no positions are known: white cells found per field, per class.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from leukoscreen.edge.cell_finder import CellFinderConfig, find_cells
from leukoscreen.edge.image_io import ImageReadError, read_image
from leukoscreen.edge.synthetic_smear import synthetic_field
from leukoscreen.training.datasets import open_dataset

MATCH_IOU = 0.3


def box_iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / float(aw * ah + bw * bh - w * h)


def synthetic_precision_recall(fields: int = 200, config: CellFinderConfig = CellFinderConfig()) -> dict:
    matched_truth = matched_found = truth = found = 0
    for seed in range(fields):
        field = synthetic_field(seed)
        boxes = [c.box for c in find_cells(field.image, config)]
        found += len(boxes)
        truth += len(field.cells)
        matched_truth += sum(any(box_iou(b, c.box) >= MATCH_IOU for b in boxes) for c in field.cells)
        matched_found += sum(any(box_iou(b, c.box) >= MATCH_IOU for c in field.cells) for b in boxes)
    return {"fields": fields, "true_cells": truth, "found_boxes": found,
            "recall": matched_truth / truth if truth else 0.0,
            "precision": matched_found / found if found else 0.0, "match_iou": MATCH_IOU}


def cells_per_field(data_dir: Path, config: CellFinderConfig = CellFinderConfig()) -> dict:
    dataset = open_dataset(data_dir)
    per_class: dict[str, list[int]] = {}
    unreadable = 0
    for sample in dataset.samples:
        try:
            count = len(find_cells(read_image(sample.path), config))
        except ImageReadError:
            unreadable += 1
            continue
        per_class.setdefault(sample.cls, []).append(count)
    summary = {cls: {"fields": len(v), "median": float(np.median(v)), "mean": float(np.mean(v)),
                     "no_cells": int(sum(c == 0 for c in v)), "p95": float(np.percentile(v, 95))}
               for cls, v in per_class.items()}
    return {"data": str(dataset.root), "per_class": summary, "unreadable": unreadable}


def evaluate_cell_finder(data_dir: Path | None, out: Path | None, fields: int = 200) -> dict:
    result = {"synthetic": synthetic_precision_recall(fields)}
    s = result["synthetic"]
    print(f"synthetic fields ({s['fields']}): recall {s['recall']:.3f}, precision {s['precision']:.3f} "
          f"({s['true_cells']} true cells, {s['found_boxes']} boxes, IoU >= {MATCH_IOU})")
    if data_dir:
        result["real"] = cells_per_field(data_dir)
        print(f"{'class':<14}{'fields':>7}{'median':>8}{'mean':>7}{'p95':>6}{'none':>6}  (white cells found per field)")
        for cls, row in result["real"]["per_class"].items():
            print(f"{cls:<14}{row['fields']:>7}{row['median']:>8.1f}{row['mean']:>7.2f}{row['p95']:>6.0f}"
                  f"{row['no_cells']:>6}")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "cell_finder.json").write_text(json.dumps(result, indent=2))
    return result
