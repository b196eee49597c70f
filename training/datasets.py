"""Readers for blood-smear data folders: class folders, C-NMC 2019 names and ALL (Aria) names.

A reader returns a `DataSet`: the image files with their class, the group each belongs to (a patient,
or a block of neighbouring file numbers from one smear) and the label views (tasks) it supports.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from leukoscreen.edge.image_io import is_image_file

ARIA_NAME = re.compile(r"^WBC-(?:(Benign)|Malignant-(Early|Pre|Pro))-(\d+)\.\w+$", re.IGNORECASE)
CNMC_NAME = re.compile(r"^UID_(h?)(\d+)_(\d+)_(\d+)_(all|hem)\.\w+$", re.IGNORECASE)
ARIA_SUBTYPES = ("Benign", "Early", "Pre", "Pro")
CELL_LABELS = ("non-blast", "blast")  # the labels of `leukoscreen data cells`, negative first
CELL_INDEX = "cells.csv"


class DataError(ValueError):
    """A data folder that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Sample:
    path: Path
    cls: str      # the finest class the data set gives (folder name or subtype)
    group: str    # images of one group never cross a split


@dataclass
class DataSet:
    root: Path
    kind: str                         # "aria", "cnmc" or "folders"
    samples: list[Sample]
    classes: list[str]                # the finest classes, in a fixed order
    views: dict[str, dict[str, str]] = field(default_factory=dict)  # task -> {class: label}

    @property
    def tasks(self) -> list[str]:
        return list(self.views)

    def labels_for(self, task: str) -> tuple[list[str], list[int]]:
        """Class names of a task and the label index of every sample."""
        if task not in self.views:
            raise DataError(f"task {task!r} is not defined for {self.root} ({self.kind}); "
                            f"use one of: {', '.join(self.tasks)}")
        mapping = self.views[task]
        names = list(dict.fromkeys(mapping.values()))
        return names, [names.index(mapping[s.cls]) for s in self.samples]


def image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))


def read_aria(root: Path, files: list[Path], block_size: int) -> DataSet:
    """ALL (Aria/Taleqani) fields: class from the name; neighbouring numbers form one group (one smear)."""
    samples = []
    for path in files:
        match = ARIA_NAME.match(path.name)
        if not match:
            raise DataError(f"{path}: not an ALL (Aria) file name (WBC-Benign-NNN.jpg or "
                            "WBC-Malignant-{Early,Pre,Pro}-NNN.jpg); rename it or use a class-folder layout")
        subtype = (match.group(1) or match.group(2)).capitalize()
        number = int(match.group(3))
        samples.append(Sample(path, subtype, f"aria-{subtype}-block{(number - 1) // block_size}"))
    classes = [c for c in ARIA_SUBTYPES if any(s.cls == c for s in samples)]
    views = {
        "subtype": {c: c for c in classes},
        "binary": {c: ("benign" if c == "Benign" else "malignant") for c in classes},
    }
    return DataSet(root, "aria", samples, classes, views)


def read_cnmc(root: Path, files: list[Path]) -> DataSet:
    """C-NMC 2019 single cells: class (all/hem) and patient id from the name; the patient is the group."""
    samples = []
    for path in files:
        match = CNMC_NAME.match(path.name)
        if not match:
            raise DataError(f"{path}: not a C-NMC 2019 file name (UID_<patient>_<image>_<cell>_all.bmp "
                            "or UID_H<subject>_<image>_<cell>_hem.bmp)")
        healthy, patient, cls = match.group(1), match.group(2), match.group(5).lower()
        subject = f"H{int(patient)}" if healthy else str(int(patient))
        samples.append(Sample(path, cls, f"cnmc-{subject}"))
    classes = ["hem", "all"]
    views = {"binary": {"hem": "hem", "all": "all"}}
    return DataSet(root, "cnmc", samples, classes, views)


def read_class_folders(root: Path, files: list[Path]) -> DataSet:
    """Any layout with one sub-folder per class; every image is its own group."""
    samples = []
    for path in files:
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            raise DataError(f"{path}: images must sit in one sub-folder per class under {root}")
        samples.append(Sample(path, relative.parts[0], f"file-{relative.as_posix()}"))
    classes = sorted({s.cls for s in samples})
    views = {"classes": {c: c for c in classes}}
    if len(classes) == 2:
        views["binary"] = {c: c for c in classes}
    return DataSet(root, "folders", samples, classes, views)


def read_cells(root: Path) -> DataSet:
    """A cell folder of `leukoscreen data cells`: label and group (the field's smear block, or the single-cell
    image) from its cells.csv."""
    with open(root / CELL_INDEX, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "label", "group"} <= set(rows[0]):
        raise DataError(f"{root / CELL_INDEX}: no cells, or not written by `leukoscreen data cells`; make the "
                        "folder again")
    for number, row in enumerate(rows, 2):
        if row["label"] not in CELL_LABELS or Path(row["file"]).is_absolute() or ".." in Path(row["file"]).parts:
            raise DataError(f"{root / CELL_INDEX} line {number}: label {row['label']!r} (use "
                            f"{' or '.join(CELL_LABELS)}) or file {row['file']!r} (a path inside the folder) is not "
                            "one `leukoscreen data cells` writes; make the folder again")
    samples = [Sample(root / row["file"], row["label"], row["group"]) for row in rows]
    classes = [c for c in CELL_LABELS if any(s.cls == c for s in samples)]
    return DataSet(root, "cells", samples, classes, {"cells": {c: c for c in classes}})


def open_dataset(root: str | Path, kind: str = "auto", block_size: int = 20) -> DataSet:
    """Read a data folder. kind: "auto" (from the file names, or a cell folder's cells.csv), "aria", "cnmc",
    "folders" or "cells"."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; pass the folder that holds the images")
    if block_size < 1:
        raise DataError(f"block size {block_size}: use a whole number >= 1")
    if kind == "cells" or (kind == "auto" and (root / CELL_INDEX).is_file()):
        dataset = read_cells(root)
        if len(dataset.classes) < 2:
            raise DataError(f"{root}: found only the label {dataset.classes}; a cell set needs blast and non-blast "
                            "cells")
        return dataset
    files = image_files(root)
    if not files:
        raise DataError(f"{root} holds no images (looked for {', '.join(('jpg', 'png', 'bmp', 'tif'))}); "
                        "check the path")
    empty = sorted(p.name for p in root.iterdir() if p.is_dir() and not image_files(p))
    if empty:
        print(f"warning: class folders with no images are ignored: {', '.join(empty)}")
    if kind == "auto":
        if all(ARIA_NAME.match(p.name) for p in files):
            kind = "aria"
        elif all(CNMC_NAME.match(p.name) for p in files):
            kind = "cnmc"
        else:
            kind = "folders"
    readers = {"aria": lambda: read_aria(root, files, block_size),
               "cnmc": lambda: read_cnmc(root, files),
               "folders": lambda: read_class_folders(root, files)}
    if kind not in readers:
        raise DataError(f"data set kind {kind!r} is unknown; use auto, aria, cnmc, folders or cells")
    dataset = readers[kind]()
    if len(dataset.classes) < 2:
        raise DataError(f"{root}: found only the class {dataset.classes}; at least two classes are needed")
    return dataset
