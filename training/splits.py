"""Leak-free splits: groups that never cross a split, stratified train/validation/test and group k-fold.

A group is the reader's group (patient, or a block of neighbouring file numbers from one smear),
merged with every group that shares an exact duplicate or a near duplicate (perceptual hash).
Every split is saved as a CSV of files with their sha256, so a run can be repeated on the same split.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.model_selection import StratifiedGroupKFold

from leukoscreen.training.fingerprints import FileInfo, near_duplicate_pairs

PARTS = ("train", "val", "test")


class SplitError(ValueError):
    """A split that cannot be made or does not match the data; the message says why."""


def merge_groups(groups: list[str], infos: list[FileInfo], near_distance: int = 6) -> np.ndarray:
    """Integer group ids after merging groups linked by exact (sha256) or near (phash) duplicates."""
    names = {name: i for i, name in enumerate(dict.fromkeys(groups))}
    n = len(groups)
    edges = [(names[groups[i]], n + i) for i in range(n)]  # sample node n+i joins its own group node
    first_with_hash: dict[str, int] = {}
    for i, info in enumerate(infos):
        j = first_with_hash.setdefault(info.sha256, i)
        if j != i:
            edges.append((n + i, n + j))
    if near_distance >= 0:
        edges += [(n + i, n + j) for i, j, _ in near_duplicate_pairs([f.phash for f in infos], near_distance)]
    rows, cols = zip(*edges)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(2 * n, 2 * n))
    _, component = connected_components(graph, directed=False)
    _, merged = np.unique(component[n:], return_inverse=True)
    return merged


def train_val_test(labels: np.ndarray, groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """A part name ("train", "val", "test") per sample: 60/20/20, stratified by label, whole groups."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if len(np.unique(groups)) < 5:
        raise SplitError(f"only {len(np.unique(groups))} independent groups (patients, smears or blocks): "
                         "at least 5 are needed for a 60/20/20 split; add data or use smaller blocks")
    parts = np.empty(len(labels), dtype=object)
    outer = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    rest, test = next(outer.split(np.zeros(len(labels)), labels, groups))
    inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed + 1)
    train, val = next(inner.split(np.zeros(len(rest)), labels[rest], groups[rest]))
    parts[test], parts[rest[train]], parts[rest[val]] = "test", "train", "val"
    return parts


def group_kfold(labels: np.ndarray, groups: np.ndarray, folds: int = 10, seed: int = 0) -> np.ndarray:
    """A fold number per sample (0..folds-1), stratified by label, whole groups in one fold."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    if len(np.unique(groups)) < folds:
        raise SplitError(f"{folds}-fold needs at least {folds} groups, the data has {len(np.unique(groups))}")
    fold_of = np.empty(len(labels), dtype=int)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        fold_of[held_out] = fold
    return fold_of


@dataclass
class SplitRow:
    path: str
    sha256: str
    label: str
    group: int
    part: str


def save_split(path: Path, rows: list[SplitRow]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "sha256", "label", "group", "part"])
        for row in rows:
            writer.writerow([row.path, row.sha256, row.label, row.group, row.part])


def load_split(path: Path) -> list[SplitRow]:
    with open(path, newline="") as handle:
        return [SplitRow(r["path"], r["sha256"], r["label"], int(r["group"]), r["part"])
                for r in csv.DictReader(handle)]


def check_no_leak(rows: list[SplitRow]) -> None:
    """Raise SplitError if any group or any identical file appears in more than one part."""
    for key in ("group", "sha256"):
        seen: dict = {}
        for row in rows:
            value = getattr(row, key)
            if seen.setdefault(value, row.part) != row.part:
                raise SplitError(f"{key} {value} appears in both {seen[value]} and {row.part} ({row.path})")
