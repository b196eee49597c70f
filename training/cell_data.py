"""`leukoscreen data cells`: a single-cell training set cut by the device's own cell finder and crop.

Fields (all-aria, its scale-bar corner masked): every white cell the device's cell finder finds (nuclei
of at least `min_nucleus_um2`) becomes a crop that inherits its field's
label, a weak label: blast-like from Early/Pre/Pro fields, non-blast from Benign fields, in the field's
group (so the cells of one smear never cross a split). Single-cell images of normal white cells (pbc-subset,
bccd-wbc): the found cell nearest the image centre (nuclei up to half the image), labelled non-blast, each image its own group; images
where no white cell is found (platelets) are left out and counted. Every crop is cut by `cell_crop` at its
source's pixel size (the median of the red-cell estimate over the source's images), so crops of every source
show the same microns at the same effective resolution. The folder holds one sub-folder per label, `cells.csv`
(file, label, group, source, field, box, um_per_px) and `cells.json` (the crop geometry and the sources).
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np

from leukoscreen.edge.cell_crops import CellGeometry, cell_crop
from leukoscreen.edge.cell_finder import CellFinderConfig, find_cells
from leukoscreen.edge.preprocessing import SCALE_BAR_CORNER, mask_corner
from leukoscreen.edge.image_io import ImageReadError, read_image
from leukoscreen.edge.scale import estimate_scale
from leukoscreen.training.datasets import CELL_INDEX as INDEX
from leukoscreen.training.datasets import CELL_LABELS, Sample, image_files, open_dataset

SINGLE_CELL_MAX_AREA = 0.5  # a single-cell image is mostly its cell: a monocyte's nucleus can fill a fifth of it
SCALE_SAMPLE = 200  # images per source whose red cells give the source's pixel size
MANIFEST = "cells.json"


def source_scale(root: Path, paths: list[str | Path]) -> tuple[float, int]:
    """Median microns per pixel over up to SCALE_SAMPLE of a source's images (spread evenly) and how many gave
    an estimate."""
    step = max(1, len(paths) // SCALE_SAMPLE)
    values = []
    for path in paths[::step]:
        try:
            estimate = estimate_scale(read_image(path))
        except ImageReadError:
            continue
        if estimate is not None:
            values.append(estimate.microns_per_pixel)
    if not values:
        raise ValueError(f"{root}: no image showed enough red cells to estimate its pixel size")
    return float(np.median(values)), len(values)


def build_cell_data(fields: Path | None, normal: list[Path], out: Path, geometry: CellGeometry = CellGeometry(),
                    finder: CellFinderConfig = CellFinderConfig(), limit: int = 0) -> dict:
    """Write the cell folder; returns its summary (also in cells.json). limit: at most this many images per
    source (0: all), for a quick look."""
    if (out / INDEX).exists():
        raise ValueError(f"{out} already holds a cell set; pass a new --out folder")
    if limit < 0:
        raise ValueError(f"limit {limit}: give a number of images per source, or 0 for all")
    rows, sources, plan = [], {}, []
    for root, from_fields in [(fields, True)] * (fields is not None) + [(path, False) for path in normal]:
        root = Path(root).expanduser().resolve()
        if from_fields:
            dataset = open_dataset(root)
            if dataset.kind != "aria":  # the weak label needs to know which fields are benign
                raise ValueError(f"{root}: --fields takes fields named as all-aria's (WBC-Benign-NNN, "
                                 "WBC-Malignant-{Early,Pre,Pro}-NNN); this folder is read as "
                                 f"{dataset.kind!r}")
            samples = dataset.samples
        elif root.is_dir():  # normal white cells, whatever their class folders: each image its own group
            samples = [Sample(p, "normal", f"file-{p.relative_to(root).as_posix()}") for p in image_files(root)]
        else:
            raise ValueError(f"{root} is not a folder of single-cell images")
        if not samples:
            raise ValueError(f"{root} holds no images")
        um_per_px, estimated_on = source_scale(root, [sample.path for sample in samples])
        plan.append((root, from_fields, samples[:: max(1, len(samples) // limit)][:limit] if limit else samples,
                     um_per_px, estimated_on))
    # every source brought to the coarsest source's resolution
    geometry = geometry.model_copy(update={"effective_um_per_px": round(max(p[3] for p in plan), 4)})
    for label in CELL_LABELS:  # only once every source was read
        (out / label).mkdir(parents=True, exist_ok=True)
    for root, from_fields, samples, um_per_px, estimated_on in plan:
        name = root.name
        found, without = 0, 0
        for sample in samples:
            try:
                rgb = read_image(sample.path)
            except ImageReadError:
                without += 1
                continue
            if from_fields:  # all-aria's scale-bar label is stained like a nucleus: not a cell
                rgb = mask_corner(rgb, SCALE_BAR_CORNER)
            limits = finder if from_fields else replace(finder, max_nucleus_um2=max(
                finder.max_nucleus_um2, SINGLE_CELL_MAX_AREA * rgb.shape[0] * rgb.shape[1] * um_per_px ** 2))
            cells = find_cells(rgb, limits, um_per_px=um_per_px)
            if not from_fields:  # a single-cell image: the cell it was taken for, at the centre
                centre = np.array(rgb.shape[1::-1]) / 2
                cells = sorted(cells, key=lambda c: float(np.hypot(*(np.array(c.centre) - centre))))[:1]
            without += not cells
            label = ("non-blast" if sample.cls == "Benign" else "blast") if from_fields else "non-blast"
            for index, cell in enumerate(cells):
                file = f"{label}/{name}-{sample.path.stem}-c{index}.png"
                crop = cell_crop(rgb, cell, um_per_px, geometry)
                if not cv2.imwrite(str(out / file), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR)):
                    raise OSError(f"could not write {out / file}")
                rows.append({"file": file, "label": label, "group": f"{name}:{sample.group}", "source": name,
                             "field": sample.path.relative_to(root).as_posix(), "class": sample.cls,
                             "box": " ".join(map(str, cell.box)), "um_per_px": round(um_per_px, 4)})
                found += 1
        sources[name] = {"folder": str(root), "images": len(samples), "cells": found,
                         "images_without_a_cell": without, "um_per_px": round(um_per_px, 4),
                         "um_per_px_from_images": estimated_on, "kind": "fields" if from_fields else "single cells"}
        print(f"{name}: {found} cells from {len(samples)} images ({without} without a white cell), "
              f"{um_per_px:.3f} um/px (median over {estimated_on} images)")
    with open(out / INDEX, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["file"])
        writer.writeheader()
        writer.writerows(rows)
    summary = {"geometry": geometry.model_dump(), "finder": asdict(finder), "sources": sources,
               "labels": {label: sum(r["label"] == label for r in rows) for label in CELL_LABELS},
               "weak_labels": "cells of Early/Pre/Pro fields are labelled blast and of Benign fields non-blast, "
                              "whatever each cell is; single-cell images of normal white cells are non-blast"}
    (out / MANIFEST).write_text(json.dumps(summary, indent=2))
    return summary


def crop_field(path: str | Path) -> str:
    """The field a crop was cut from, `SOURCE-STEM`, from the crop's name (`LABEL/SOURCE-STEM-cN.png`)."""
    name = Path(path).name
    return name[:name.rindex("-c")]


def read_cell_geometry(root: Path) -> tuple[CellGeometry, float | None]:
    """The crop geometry of a cell folder and the pixel size of its field source (None if it has none)."""
    summary = json.loads((root / MANIFEST).read_text())
    fields = [s["um_per_px"] for s in summary["sources"].values() if s["kind"] == "fields"]
    return CellGeometry(**summary["geometry"]), (fields[0] if fields else None)


def weak_label_check(root: Path, paths: list[str], probabilities: np.ndarray, class_names: list[str]) -> dict:
    """How noisy the weak labels look to a model, per source and field class: of the crops, the share the
    model calls blast, and the share it contradicts with a probability of 0.9 or more (a blast-labelled crop
    it is sure is not a blast, or the other way round). A high share in one group is label noise, or a model
    that has not learnt that group; either way the figure says how far a cell's label can be trusted."""
    with open(root / INDEX, newline="") as handle:
        about = {str(root / row["file"]): (row["source"], row["class"], row["label"]) for row in csv.DictReader(handle)}
    blast = class_names.index("blast")
    groups: dict[str, list[float]] = {}
    labels: dict[str, str] = {}
    for path, p in zip(paths, probabilities):
        source, cls, label = about[str(path)]
        key = f"{source} {cls}"
        groups.setdefault(key, []).append(float(p[blast]))
        labels[key] = label
    result = {}
    for key, scores in sorted(groups.items()):
        scores = np.array(scores)
        contradicted = scores <= 0.1 if labels[key] == "blast" else scores >= 0.9
        result[key] = {"label": labels[key], "crops": len(scores), "called_blast": float(np.mean(scores >= 0.5)),
                       "confidently_contradicted": float(np.mean(contradicted))}
    return result
