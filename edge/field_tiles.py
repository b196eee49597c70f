"""A frame at the field model's scale: resampled to the pixel size the model was trained at, without changing
its aspect ratio, and cut into tiles of the model's field instead of squashed into one.

Only for a camera whose pixel size is configured (a stage micrometer's value, `[scale] um_per_px`): a per-field
estimate from the red cells is too rough to resample by (on all-aria's one camera its 5-95% range is 0.83-1.34
times the median). A frame that is smaller than the model's field at its scale is read whole, as captured.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

MAX_TILES = 16        # a larger frame is read in 16 tiles spread over it (about 2 ms of model each, int8)
SAME_SCALE = 0.02     # pixel sizes within 2% of the model's are not resampled


def model_tiles(rgb: np.ndarray, um_per_px: float, model_um_per_px: float, field_px: int) -> list[np.ndarray]:
    """Tiles of `field_px` square at `model_um_per_px` covering the frame (overlapping evenly where the frame is not
    a whole number of tiles), or [rgb] when the frame is smaller than one tile at that scale."""
    factor = um_per_px / model_um_per_px
    height, width = rgb.shape[:2]
    if min(height, width) * factor < field_px:
        return [rgb]
    if abs(factor - 1) > SAME_SCALE:
        rgb = cv2.resize(rgb, (round(width * factor), round(height * factor)),
                         interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
    height, width = rgb.shape[:2]
    rows, columns = math.ceil(height / field_px), math.ceil(width / field_px)
    while rows * columns > MAX_TILES:   # keep the aspect ratio of the grid, fewer tiles
        rows, columns = (rows - 1, columns) if rows >= columns else (rows, columns - 1)
    tops = np.linspace(0, height - field_px, rows).round().astype(int)
    lefts = np.linspace(0, width - field_px, columns).round().astype(int)
    return [rgb[top:top + field_px, left:left + field_px] for top in tops for left in lefts]
