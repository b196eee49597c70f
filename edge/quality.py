"""The quality gate: is a captured field usable? Focus, exposure, stain and white cells present.

A failed gate gives a retake message with the reason instead of a result.
"""
from __future__ import annotations

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, computed_field
from pydantic.dataclasses import dataclass


@dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class QualityConfig:
    """The `[quality]` section of the device configuration."""
    min_focus: StrictFloat = Field(15.0, ge=0, description="variance of the Laplacian of the grayscale field (depends on "
                                                     "the camera: raise it for sharp high-resolution cameras)")
    max_dark_fraction: StrictFloat = Field(0.5, ge=0, le=1, description="share of pixels with luminance < 20")
    max_clipped_fraction: StrictFloat = Field(0.5, ge=0, le=1, description="share of pixels white in all three channels")
    min_stain_fraction: StrictFloat = Field(0.0005, ge=0, le=1, description="share of stained (purple) pixels")
    min_cells: StrictInt = Field(1, ge=0, description="white cells the cell finder must find")


class QualityReport(BaseModel):
    """What the gate measured on one field, and why it was refused (no reasons: usable)."""
    model_config = ConfigDict(frozen=True)
    focus: float
    dark_fraction: float
    clipped_fraction: float
    stain_fraction: float
    cells: int
    reasons: tuple[str, ...] = ()

    @computed_field
    @property
    def passed(self) -> bool:
        return not self.reasons

    @computed_field
    @property
    def message(self) -> str:
        return "OK" if self.passed else "Retake: " + "; ".join(self.reasons)


def focus_score(rgb: np.ndarray) -> float:
    """Variance of the Laplacian of the grayscale image: higher is sharper (scale depends on the camera)."""
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


def check_quality(rgb: np.ndarray, stain_mask: np.ndarray, cells: int,
                  config: QualityConfig = QualityConfig()) -> QualityReport:
    """Scores and reasons for an RGB field, its stain mask (0/255) and the number of cells found."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    focus = focus_score(rgb)
    dark = float(np.mean(gray < 20))
    clipped = float(np.mean((rgb == 255).all(axis=2)))
    stain = float(np.mean(stain_mask > 0))
    reasons = []
    if dark > config.max_dark_fraction:
        reasons.append("too dark (check the lamp and exposure)")
    if clipped > config.max_clipped_fraction:
        reasons.append("overexposed (reduce the light or exposure)")
    if focus < config.min_focus and not reasons:
        reasons.append("out of focus")
    if stain < config.min_stain_fraction and not reasons:
        reasons.append("no stained cells visible (check the slide and stain)")
    elif cells < config.min_cells and not reasons:
        reasons.append("no white cells found (move to another field)")
    return QualityReport(focus=focus, dark_fraction=dark, clipped_fraction=clipped, stain_fraction=stain,
                         cells=cells, reasons=tuple(reasons))
