"""Physical scale of a smear image, from its red cells: microns per pixel.

Normal red cells are about 7.5-8 um across (7.8 um taken here), so the typical red-cell diameter in pixels
gives the scale. The red cells are the pixels darker than the background (Otsu's threshold on the pixels that
are not stained purple), their pale centres filled. Two estimators of the typical diameter:
- isolated round cells: the median equivalent diameter of whole, round (as wide as high, filling their
  bounding ellipse), unclipped components, when a field has at least three;
- granulometry otherwise (crowded fields of touching cells): the radius of the disk whose morphological
  opening removes the most red-cell area (the peak of the pattern spectrum).
One field gives a rough estimate; a microscope's scale is the median over many of its fields (`leukoscreen
scale IMAGES...`), or a stage micrometer's value in the device configuration.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import ConfigDict, Field, StrictFloat, field_validator
from pydantic.dataclasses import dataclass as config_dataclass

from leukoscreen.edge.cell_finder import CellFinderConfig, stain_mask

RED_CELL_DIAMETER_UM = 7.8
MIN_ROUND_CELLS = 3
MIN_UM_PER_PX, MAX_UM_PER_PX = 0.02, 5.0   # a configured camera's pixel size, plausibly


@config_dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class ScaleConfig:
    """The `[scale]` section of the device configuration: the camera's pixel size."""
    um_per_px: StrictFloat = Field(0.0, ge=0, description=(
        "microns per pixel of the camera on this microscope (a stage micrometer's value, between 0.02 and 5); 0: "
        "estimate it on every field from its red cells"))

    @field_validator("um_per_px")
    @classmethod
    def _plausible(cls, value: float) -> float:
        if value and not MIN_UM_PER_PX <= value <= MAX_UM_PER_PX:
            raise ValueError(f"{value:g} um per pixel is not a blood-smear camera's (between {MIN_UM_PER_PX} and "
                             f"{MAX_UM_PER_PX}: a red cell of 7.5 um is then 1.5 to 375 pixels across); measure it "
                             "with a stage micrometer, or `leukoscreen scale` on a few fields, or give 0 to estimate it")
        return value


@dataclass(frozen=True)
class FieldScale:
    """The pixel size a field was read at, and where it came from."""
    um_per_px: float | None
    source: str                  # "configured", "estimated (round cells)", "estimated (granulometry)", "unknown"


@dataclass(frozen=True)
class ScaleEstimate:
    diameter_px: float           # typical red-cell diameter
    method: str                  # "round cells" or "granulometry"
    cells: int                   # round cells measured (0 for granulometry)

    @property
    def microns_per_pixel(self) -> float:
        return RED_CELL_DIAMETER_UM / self.diameter_px


def red_cell_mask(rgb: np.ndarray, finder: CellFinderConfig = CellFinderConfig()) -> np.ndarray:
    """0/1 mask of red cells (unstained pixels darker than the background), pale centres filled."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    stained = cv2.dilate(stain_mask(rgb, finder), np.ones((5, 5), np.uint8)) > 0
    unstained = gray[~stained]
    if unstained.size < 100:
        return np.zeros_like(gray)
    threshold, _ = cv2.threshold(unstained.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    cells = ((gray < threshold) & ~stained).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(1 - cells, connectivity=4)
    small_holes = [i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] < 0.002 * cells.size]
    return (cells | np.isin(labels, small_holes)).astype(np.uint8)


def _round_cells(mask: np.ndarray) -> list[float]:
    """Equivalent diameters (from the pixel count) of whole, round components: not touching the border, about
    as wide as high, and filling the ellipse of their bounding box (two touching cells do not)."""
    height, width = mask.shape
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    diameters = []
    for x, y, w, h, area in stats[1:]:
        if area < 20 or x <= 0 or y <= 0 or x + w >= width or y + h >= height:
            continue  # specks, and cells cut by the border
        if max(w, h) <= 1.3 * min(w, h) and area >= 0.8 * np.pi * w * h / 4:
            diameters.append(2 * np.sqrt(area / np.pi))
    return diameters


def _granulometry(mask: np.ndarray) -> float | None:
    areas = [int(mask.sum())]
    for radius in range(1, max(3, min(mask.shape) // 8)):
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        areas.append(int(cv2.morphologyEx(mask, cv2.MORPH_OPEN, disk).sum()))
        if areas[-1] < 0.02 * areas[0]:
            break  # nearly everything removed: the peak is behind
    spectrum = -np.diff(areas)
    return 2.0 * (1 + int(np.argmax(spectrum))) + 1 if spectrum.size and spectrum.max() > 0 else None


def estimate_scale(rgb: np.ndarray, finder: CellFinderConfig = CellFinderConfig()) -> ScaleEstimate | None:
    """The field's scale from its red cells; None when it has too few red cells to tell."""
    mask = red_cell_mask(rgb, finder)
    if mask.mean() < 0.02:
        return None
    round_cells = _round_cells(mask)
    if len(round_cells) >= MIN_ROUND_CELLS:
        return ScaleEstimate(float(np.median(round_cells)), "round cells", len(round_cells))
    diameter = _granulometry(mask)
    return ScaleEstimate(diameter, "granulometry", 0) if diameter else None


def field_scale(rgb: np.ndarray, config: ScaleConfig = ScaleConfig(),
                finder: CellFinderConfig = CellFinderConfig()) -> FieldScale:
    """The configured pixel size, or this field's estimate (unknown when it has too few red cells)."""
    if config.um_per_px:
        return FieldScale(config.um_per_px, "configured")
    estimate = estimate_scale(rgb, finder)
    if estimate is None:
        return FieldScale(None, "unknown")
    return FieldScale(estimate.microns_per_pixel, f"estimated ({estimate.method})")
