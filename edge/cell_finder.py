"""Finding white cells in a smear field: the thesis' HSV-threshold route plus morphology.

Median filter, RGB -> HSV, `cv2.inRange` keeps the purple-stained nuclei, opening and closing clean the
mask, a distance-transform watershed splits touching nuclei, and connected components within size limits
become cells. Each cell gets a square box (the nucleus plus a margin for cytoplasm) and a crop.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import ConfigDict, Field, StrictBool, StrictFloat, StrictInt
from pydantic.dataclasses import dataclass as config_dataclass

from leukoscreen.edge.stain import STAINED_LOWER, STAINED_UPPER, check_hsv_bounds, hsv_mask


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class CellFinderConfig:
    """The `[cell_finder]` section of the device configuration."""
    hsv_lower: tuple[StrictInt, StrictInt, StrictInt] = Field(
        STAINED_LOWER, description="OpenCV HSV lower bound of stained nuclei (hue 0-179, saturation, value 0-255)")
    hsv_upper: tuple[StrictInt, StrictInt, StrictInt] = Field(STAINED_UPPER, description="upper HSV bound")
    median: StrictInt = Field(5, ge=0, description="median filter aperture before thresholding (0 = off)")
    min_area_fraction: StrictFloat = Field(0.0008, description=(
        "smallest nucleus, as a fraction of the field area, where the pixel size is not known"))
    max_area_fraction: StrictFloat = Field(0.08, description=(
        "largest nucleus, as a fraction of the field area, where the pixel size is not known"))
    split_touching: StrictBool = Field(True, description="split touching round nuclei (distance-transform watershed)")
    box_margin: StrictFloat = Field(0.35, ge=0, le=2, description="box side = nucleus side * (1 + 2 * margin)")
    min_nucleus_um2: StrictFloat = Field(15.0, ge=0, description=(
        "smallest nucleus in square microns, where the pixel size is known (cell models): smaller stained "
        "specks (platelets, fragments) are not white cells"))
    max_nucleus_um2: StrictFloat = Field(1150.0, description=(
        "largest nucleus (or clump) in square microns, where the pixel size is known (0.08 of an all-aria field)"))

    def __post_init__(self):
        check_hsv_bounds(self.hsv_lower, self.hsv_upper, "cell_finder")
        if self.median and (self.median % 2 == 0 or not 3 <= self.median <= 31):
            raise ValueError(f"cell_finder.median = {self.median}: use 0 (off) or an odd number from 3 to 31")
        if not 0 < self.min_area_fraction < self.max_area_fraction < 1:
            raise ValueError(f"cell_finder area limits {self.min_area_fraction}, {self.max_area_fraction}: "
                             "need 0 < min_area_fraction < max_area_fraction < 1")
        if not 0 <= self.min_nucleus_um2 < self.max_nucleus_um2:
            raise ValueError(f"cell_finder nucleus limits {self.min_nucleus_um2}, {self.max_nucleus_um2} um^2: "
                             "need 0 <= min_nucleus_um2 < max_nucleus_um2")


@dataclass(frozen=True)
class FoundCell:
    box: tuple[int, int, int, int]   # x, y, width, height in field pixels (clipped to the field)
    area: int                        # nucleus area in pixels
    centre: tuple[float, float]      # x, y of the nucleus' bounding-box centre (a clipped box is off-centre)


def stain_mask(rgb: np.ndarray, config: CellFinderConfig = CellFinderConfig()) -> np.ndarray:
    """uint8 mask (0/255) of stained (purple) pixels after median filtering."""
    smoothed = cv2.medianBlur(rgb, config.median) if config.median else rgb
    return hsv_mask(smoothed, config.hsv_lower, config.hsv_upper)


def _split_touching(region: np.ndarray, min_area: float) -> list[np.ndarray]:
    """Split one nucleus mask where it is two or more touching round nuclei (distance-transform
    watershed); keep it whole when a part would be smaller than a nucleus (lobes of one nucleus)."""
    distance = cv2.distanceTransform(region, cv2.DIST_L2, 5)
    peaks = (distance >= 0.6 * distance.max()).astype(np.uint8)
    count, markers = cv2.connectedComponents(peaks)
    if count <= 2:  # background plus one peak: a single nucleus
        return [region]
    markers = markers + 1
    markers[(region > 0) & (peaks == 0)] = 0
    markers = cv2.watershed(cv2.cvtColor(region * 255, cv2.COLOR_GRAY2BGR), markers.astype(np.int32))
    parts = [(markers == label).astype(np.uint8) for label in range(2, count + 1)]
    if min(int(p.sum()) for p in parts) < min_area:
        return [region]
    return parts


def nucleus_limits(shape: tuple[int, ...], config: CellFinderConfig = CellFinderConfig(),
                   um_per_px: float | None = None) -> tuple[float, float]:
    """Smallest and largest nucleus in pixels: `min_nucleus_um2` and `max_nucleus_um2` where the pixel size is
    known (so a large frame of a coarse camera still has white cells), else shares of the field's area."""
    if um_per_px:
        return config.min_nucleus_um2 / um_per_px ** 2, config.max_nucleus_um2 / um_per_px ** 2
    field_area = shape[0] * shape[1]
    return config.min_area_fraction * field_area, config.max_area_fraction * field_area


def find_cells(rgb: np.ndarray, config: CellFinderConfig = CellFinderConfig(),
               mask: np.ndarray | None = None, um_per_px: float | None = None) -> list[FoundCell]:
    """White cells in an RGB field, largest first. mask: its `stain_mask`, when already computed; um_per_px:
    the field's pixel size, when known (see `nucleus_limits`)."""
    height, width = rgb.shape[:2]
    mask = stain_mask(rgb, config) if mask is None else mask
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    min_area, max_area = nucleus_limits(rgb.shape, config, um_per_px)
    count, labels = cv2.connectedComponents(mask)
    regions = []
    for label in range(1, count):
        region = (labels == label).astype(np.uint8)
        regions += _split_touching(region, min_area) if config.split_touching else [region]
    cells = []
    for region in regions:
        area = int(region.sum())
        if not min_area <= area <= max_area:
            continue
        x, y, w, h = cv2.boundingRect(region)
        side = int(max(w, h) * (1 + 2 * config.box_margin))
        cx, cy = x + w / 2, y + h / 2
        x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        x1, y1 = int(min(width, cx + side / 2)), int(min(height, cy + side / 2))
        cells.append(FoundCell((x0, y0, x1 - x0, y1 - y0), area, (cx, cy)))
    return sorted(cells, key=lambda c: -c.area)

