"""What "stained" means on the device: OpenCV HSV bounds of the purple-stained white-cell nuclei.

Defined once here and used by the cell finder (its mask of stained pixels), by models that read only the
stained pixels (the ODRNN's masked input, recorded in the bundle manifest's `preprocess`) and by training.
"""
from __future__ import annotations

import cv2
import numpy as np

# The default bounds: hue 118-170 of OpenCV's 0-179, saturation at least 65 (all-aria's May-Grunwald-Giemsa).
STAINED_LOWER = (118, 65, 0)
STAINED_UPPER = (170, 255, 255)
HSV_LIMITS = (179, 255, 255)


def check_hsv_bounds(lower, upper, key: str) -> None:
    """Raise ValueError naming `key` unless lower and upper are three numbers each within OpenCV's HSV
    ranges (hue 0-179, saturation and value 0-255) with lower <= upper."""
    ok = len(lower) == 3 and len(upper) == 3 and all(
        0 <= lo <= hi <= top for lo, hi, top in zip(lower, upper, HSV_LIMITS))
    if not ok:
        raise ValueError(f"{key}.hsv_lower/hsv_upper = {tuple(lower)}/{tuple(upper)}: give three numbers each "
                         "(hue 0-179, saturation and value 0-255), lower <= upper")


def hsv_mask(rgb: np.ndarray, lower, upper) -> np.ndarray:
    """uint8 mask (0/255) of the pixels whose OpenCV HSV values lie within [lower, upper]."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return cv2.inRange(hsv, np.array(lower, np.uint8), np.array(upper, np.uint8))


def keep_stained(rgb: np.ndarray, lower, upper) -> np.ndarray:
    """The image with everything outside the HSV bounds set to black."""
    return cv2.bitwise_and(rgb, rgb, mask=hsv_mask(rgb, lower, upper))
