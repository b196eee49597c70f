"""A frame at the field model's scale: resampled to the pixel size the model was trained at, without changing
its aspect ratio, and cut into tiles of the model's field instead of squashed into one.

Only for a camera whose pixel size is configured (a stage micrometer's value, `[scale] um_per_px`): a per-field
estimate from the red cells is too rough to resample by (on all-aria's one camera its 5-95% range is 0.79-1.22
times the median). A frame narrower than the model's field at its scale is read in tiles of its short side.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

MAX_TILES = 100       # a frame needing more tiles of the model's field is refused (a few ms of model each, int8)
SAME_SCALE = 0.02     # pixel sizes within 2% of the model's are not resampled


def model_tiles(rgb: np.ndarray, um_per_px: float, model_um_per_px: float, field_px: int) -> list[np.ndarray]:
    """Square tiles covering the whole frame at `model_um_per_px`: of `field_px`, or of the frame's short side when
    that is smaller (read at nearly the model's scale), overlapping evenly where the frame is not a whole number
    of tiles. ValueError when the frame would need more than MAX_TILES (the configured pixel size is then
    implausible for it, or the frame far larger than the model's field)."""
    factor = um_per_px / model_um_per_px
    height, width = rgb.shape[:2]
    if abs(factor - 1) <= SAME_SCALE:
        factor = 1.0
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    side = min(field_px, *size)
    rows, columns = math.ceil(size[1] / side), math.ceil(size[0] / side)
    if side < 32:
        raise ValueError(f"at {um_per_px:g} um per pixel this {width}x{height} frame is {size[0]}x{size[1]} pixels at "
                         "the model's scale, too small to read: check `[scale] um_per_px`")
    if rows * columns > MAX_TILES:
        raise ValueError(f"at {um_per_px:g} um per pixel this {width}x{height} frame needs {rows * columns} tiles of "
                         f"the model's field (at most {MAX_TILES}): check `[scale] um_per_px`, or capture a smaller "
                         "frame")
    if factor != 1.0:
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
    tops = np.linspace(0, size[1] - side, rows).round().astype(int)
    lefts = np.linspace(0, size[0] - side, columns).round().astype(int)
    return [rgb[top:top + side, left:left + side] for top in tops for left in lefts]
