"""From a data folder to labelled, grouped, split and preprocessed arrays ready for training.

Unreadable files are skipped and reported (never a crash in the middle of a run); preprocessed images
are cached on disk as uint8 arrays keyed by file contents and preprocessing parameters.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from leukoscreen.edge.image_io import read_image
from leukoscreen.edge.preprocessing import PreprocessConfig, lab_statistics, preprocess
from leukoscreen.training.datasets import DataError, DataSet, open_dataset
from leukoscreen.training.fingerprints import FileInfo, fingerprint_files
from leukoscreen.training.splits import (SplitError, SplitRow, check_no_leak, load_split, merge_groups,
                                         train_val_test)


def default_cache_dir() -> Path:
    return Path(os.environ.get("LEUKOSCREEN_CACHE", Path.home() / ".cache" / "leukoscreen"))


@dataclass
class PreparedData:
    dataset: DataSet
    task: str
    class_names: list[str]
    rows: list[SplitRow]           # readable files only, with their part
    labels: np.ndarray             # label index per row
    skipped: list[FileInfo]        # unreadable files, with the reason

    def part(self, name: str) -> np.ndarray:
        """Row indices of a part ("train", "val", "test", or "all")."""
        if name == "all":
            return np.arange(len(self.rows))
        return np.array([i for i, row in enumerate(self.rows) if row.part == name], dtype=int)

    @property
    def paths(self) -> list[str]:
        return [row.path for row in self.rows]

    @property
    def sha256s(self) -> list[str]:
        return [row.sha256 for row in self.rows]


def prepare(data_dir: str | Path, task: str | None = None, kind: str = "auto", block_size: int = 20,
            near_distance: int = 6, seed: int = 0, split_file: Path | None = None,
            cache_dir: Path | None = None, all_test: bool = False) -> PreparedData:
    """Read, fingerprint, group and split a data folder.

    split_file: re-use a saved split (files must match by sha256). all_test: every image in "test"
    (evaluating on a data set the model was not trained on).
    """
    dataset = open_dataset(data_dir, kind=kind, block_size=block_size)
    task = task or dataset.tasks[0]
    class_names, label_of = dataset.labels_for(task)
    infos = fingerprint_files([s.path for s in dataset.samples], cache_dir or default_cache_dir())
    skipped = [info for info in infos if info.error]
    for info in skipped:
        print(f"skipped: {info.error}")
    keep = [i for i, info in enumerate(infos) if not info.error]
    if not keep:
        raise DataError(f"{data_dir}: none of the {len(infos)} images could be read")
    samples = [dataset.samples[i] for i in keep]
    infos = [infos[i] for i in keep]
    labels = np.array([label_of[i] for i in keep])
    groups = merge_groups([s.group for s in samples], infos, near_distance)
    if split_file:
        parts = _parts_from_saved(split_file, samples, infos)
    elif all_test:
        parts = np.array(["test"] * len(samples), dtype=object)
    else:
        parts = train_val_test(labels, groups, seed)
    rows = [SplitRow(str(s.path), info.sha256, class_names[label], int(group), str(part))
            for s, info, label, group, part in zip(samples, infos, labels, groups, parts)]
    check_no_leak(rows)
    return PreparedData(dataset, task, class_names, rows, labels, skipped)


def _parts_from_saved(split_file: Path, samples, infos) -> np.ndarray:
    saved = {row.sha256: row.part for row in load_split(split_file)}
    missing = [str(s.path) for s, info in zip(samples, infos) if info.sha256 not in saved]
    if missing:
        raise SplitError(f"{len(missing)} images are not in the saved split {split_file} "
                         f"(first: {missing[0]}); the data changed since that run")
    return np.array([saved[info.sha256] for info in infos], dtype=object)


def preprocessed_images(paths: list[str], sha256s: list[str], config: PreprocessConfig,
                        cache_dir: Path | None = None) -> np.ndarray:
    """(N, S, S, 3) uint8 array of `preprocess(read_image(path), config)`, cached on disk."""
    cache_dir = cache_dir or default_cache_dir()
    key = hashlib.sha256(json.dumps([config.to_dict(), sha256s], sort_keys=True).encode()).hexdigest()[:24]
    cache_file = cache_dir / f"preprocessed-{key}.npy"
    if cache_file.exists():
        return np.load(cache_file)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        images = np.stack(list(pool.map(lambda p: preprocess(read_image(p), config), paths)))
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")  # commands may run side by side
    with open(temporary, "wb") as handle:
        np.save(handle, images)
    os.replace(temporary, cache_file)
    return images


def with_colour_reference(config: PreprocessConfig, paths: list[str], sha256s: list[str]) -> PreprocessConfig:
    """For Reinhard normalisation without a reference: the mean L*a*b* statistics of these (training)
    images after the same resizing and filtering; other configurations come back unchanged."""
    if config.colour != "reinhard" or config.reference:
        return config
    plain = replace(config, colour="rgb", reference=())
    statistics = np.stack([lab_statistics(image) for image in preprocessed_images(paths, sha256s, plain)])
    reference = tuple(round(float(v), 3) for v in statistics.mean(axis=0))
    print(f"Reinhard colour reference from {len(paths)} training images: {reference}")
    return replace(config, reference=reference)
