"""One white cell as a cell model reads it: a square of fixed physical size around the nucleus, at one
effective resolution, whatever the camera.

The square is `side_um` microns wide around the nucleus' centre, cut at the field's pixel size (the
device's configured or estimated microns per pixel), brought down to `effective_um_per_px` (the coarsest
training source, so that sharpness carries no source) and resampled to `pixels` x `pixels`. Where the
square leaves the field it is filled by reflecting the field's border. The desktop makes its training crops
with this same function (`leukoscreen data cells`).
"""
from __future__ import annotations

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from leukoscreen.edge.cell_finder import FoundCell


class CellGeometry(BaseModel):
    """How a cell model's crops are cut (the `cell` part of a cell bundle's manifest)."""
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    side_um: float = Field(24.0, ge=5, le=100, description="side of the square around each white cell, in microns "
                                                            "(a large blast is about 20 um across)")
    pixels: int = Field(64, ge=8, le=512, description="side of the crop after resampling, in pixels")
    effective_um_per_px: float = Field(0.474, gt=0, le=10, description=(
        "every crop is first brought down to this pixel size (microns per pixel of the coarsest training "
        "source), so that all sources have the same effective resolution"))


def cell_crop(rgb: np.ndarray, cell: FoundCell, um_per_px: float, geometry: CellGeometry) -> np.ndarray:
    """The cell's crop, `geometry.pixels` square, uint8 RGB. um_per_px: the field's pixel size."""
    if not um_per_px > 0:
        raise ValueError(f"a cell crop needs the field's pixel size, got {um_per_px} um per pixel")
    side = max(2, int(round(geometry.side_um / um_per_px)))
    left, top = int(round(cell.centre[0] - side / 2)), int(round(cell.centre[1] - side / 2))
    height, width = rgb.shape[:2]
    region = rgb[max(0, top):max(0, top + side), max(0, left):max(0, left + side)]
    pads = (max(0, -top), max(0, top + side - height), max(0, -left), max(0, left + side - width))
    if any(pads):
        if region.size == 0 or max(pads) >= min(region.shape[:2]):  # beyond what reflection can fill
            region = cv2.copyMakeBorder(region if region.size else rgb[:1, :1], *pads, cv2.BORDER_REPLICATE)
        else:
            region = cv2.copyMakeBorder(region, *pads, cv2.BORDER_REFLECT_101)
    coarse = max(2, int(round(geometry.side_um / geometry.effective_um_per_px)))
    if side > coarse:
        region = cv2.resize(region, (coarse, coarse), interpolation=cv2.INTER_AREA)
    interpolation = cv2.INTER_AREA if region.shape[0] > geometry.pixels else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(region, (geometry.pixels, geometry.pixels), interpolation=interpolation))
