"""Synthetic blood-smear fields with known white-cell positions, for demos, tests and the cell finder's
evaluation: a pale background, many pink-grey red cells, and a few white cells with purple nuclei,
either normal-looking (small, dense, lobed) or blast-like (large, round, fine chromatin)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class SyntheticCell:
    box: tuple[int, int, int, int]   # x, y, width, height of the white cell in pixels
    blast: bool


@dataclass(frozen=True)
class SyntheticField:
    image: np.ndarray                # H x W x 3 uint8 RGB
    cells: list[SyntheticCell]


def synthetic_field(seed: int = 0, size: int = 480, white_cells: int | None = None,
                    blast_fraction: float = 0.5) -> SyntheticField:
    """One field of size x size pixels; white cells do not overlap each other."""
    rng = np.random.default_rng(seed)
    scale = size / 480
    image = np.empty((size, size, 3), np.float32)
    image[:] = (236, 228, 232) + rng.normal(0, 3, 3)
    for _ in range(int(110 * scale * scale)):  # red cells: pale centre, darker rim
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        radius = int(rng.integers(int(11 * scale), int(15 * scale)))
        cv2.circle(image, centre, radius, (205, 170, 185), -1, cv2.LINE_AA)
        cv2.circle(image, centre, max(1, radius // 2), (222, 198, 208), -1, cv2.LINE_AA)
    count = int(rng.integers(1, 5)) if white_cells is None else white_cells
    cells: list[SyntheticCell] = []
    attempts = 0
    while len(cells) < count and attempts < 200:
        attempts += 1
        blast = bool(rng.random() < blast_fraction)
        radius = int((rng.integers(24, 30) if blast else rng.integers(18, 23)) * scale)
        cx, cy = (int(v) for v in rng.integers(radius + 2, size - radius - 2, 2))
        box = (cx - radius, cy - radius, 2 * radius, 2 * radius)
        if any(_overlaps(box, other.box, margin=int(6 * scale)) for other in cells):
            continue
        cv2.circle(image, (cx, cy), radius, (200, 185, 215), -1, cv2.LINE_AA)  # cytoplasm
        if blast:
            nucleus = int(radius * 0.85)
            cv2.circle(image, (cx, cy), nucleus, (125, 70, 160), -1, cv2.LINE_AA)
            speckle = rng.normal(0, 10, (2 * nucleus, 2 * nucleus, 1))
            region = image[cy - nucleus:cy + nucleus, cx - nucleus:cx + nucleus]
            mask = np.hypot(*np.mgrid[-nucleus:nucleus, -nucleus:nucleus]) < nucleus
            region[mask] += speckle[mask]
        else:
            for _ in range(3):  # a lobed, dense nucleus
                offset = rng.integers(-radius // 3, radius // 3 + 1, 2)
                cv2.circle(image, (cx + int(offset[0]), cy + int(offset[1])), int(radius * 0.38),
                           (95, 45, 125), -1, cv2.LINE_AA)
        cells.append(SyntheticCell(box, blast))
    image += rng.normal(0, 4, image.shape)
    image = cv2.GaussianBlur(np.clip(image, 0, 255), (3, 3), 0)
    return SyntheticField(image.astype(np.uint8), cells)


def _overlaps(a, b, margin: int = 0) -> bool:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    return ax - margin < bx + bw and bx - margin < ax + aw and ay - margin < by + bh and by - margin < ay + ah
