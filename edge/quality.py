"""The quality gate: is a captured field usable? Focus, exposure, stain and white cells present.

A failed gate gives a retake message with the reason instead of a result.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class QualityConfig:
    min_focus: float = 15.0            # variance of the Laplacian of the grayscale field (depends on camera)
    max_dark_fraction: float = 0.5     # share of pixels with luminance < 20
    max_clipped_fraction: float = 0.5  # share of pixels white in all three channels
    min_stain_fraction: float = 0.0005 # share of stained (purple) pixels
    min_cells: int = 1


@dataclass(frozen=True)
class QualityReport:
    focus: float
    dark_fraction: float
    clipped_fraction: float
    stain_fraction: float
    cells: int
    reasons: tuple[str, ...]          # empty when the field is usable

    @property
    def passed(self) -> bool:
        return not self.reasons

    @property
    def message(self) -> str:
        return "OK" if self.passed else "Retake: " + "; ".join(self.reasons)

    def to_dict(self) -> dict:
        return asdict(self) | {"passed": self.passed, "message": self.message}


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
    return QualityReport(focus, dark, clipped, stain, cells, tuple(reasons))
