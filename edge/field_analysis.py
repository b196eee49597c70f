"""Field analysis, once per capture and before any model: stain mask -> cell finder -> quality gate.

The quality gate needs the number of white cells, so the cell finder runs first. However many models then
compare their answers on the field, it is analysed once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from leukoscreen.edge.cell_finder import CellFinderConfig, FoundCell, find_cells, stain_mask
from leukoscreen.edge.quality import QualityConfig, QualityReport, check_quality
from leukoscreen.edge.scale import FieldScale, ScaleConfig, field_scale

MIN_SIDE = 32


@dataclass(frozen=True)
class FieldAnalysis:
    cells: tuple[FoundCell, ...]     # white cells, largest first
    quality: QualityReport
    timings_ms: dict[str, float]     # find_cells, quality, scale
    scale: FieldScale = FieldScale(None, "not measured")


def check_frame(rgb: np.ndarray) -> None:
    """Raise ValueError unless the frame is an RGB uint8 image of at least 32x32 pixels."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < MIN_SIDE:
        raise ValueError(f"a field must be an RGB image of at least {MIN_SIDE}x{MIN_SIDE} pixels, got shape "
                         f"{rgb.shape}")


def analyse_field(rgb: np.ndarray, finder: CellFinderConfig = CellFinderConfig(),
                  quality: QualityConfig = QualityConfig(), scale: ScaleConfig | None = None) -> FieldAnalysis:
    """The white cells of an H x W x 3 uint8 RGB field and the quality gate's verdict on it. With `scale` (cell
    models, and any model once the camera's pixel size is configured), also the field's pixel size, and the
    nucleus limits are in square microns (`cell_finder.nucleus_limits`: platelets are not white cells, and a
    large frame of a coarse camera still has some). A configured pixel size also sets the scale the focus is measured at (`quality.focus_at_scale`;
    a per-field estimate is too rough for that: on all-aria's one camera its 5-95% range is 0.83-1.34 times the
    median)."""
    check_frame(rgb)
    started = time.perf_counter()
    mask = stain_mask(rgb, finder)
    pixel_size = FieldScale(None, "not measured")
    timings = {}
    if scale is not None:
        pixel_size = field_scale(rgb, scale, finder)
        timings["scale"] = (time.perf_counter() - started) * 1e3
    found = time.perf_counter()
    cells = tuple(find_cells(rgb, finder, mask, pixel_size.um_per_px))
    timings["find_cells"] = (time.perf_counter() - found) * 1e3
    checking = time.perf_counter()
    configured = pixel_size.um_per_px if pixel_size.source == "configured" else None  # estimates: too rough
    report = check_quality(rgb, mask, len(cells), quality, configured)
    timings["quality"] = (time.perf_counter() - checking) * 1e3
    return FieldAnalysis(cells, report, timings, pixel_size)
