"""The quality gate: is a captured field usable? Exposure, compression, noise, focus, stain and white cells.

A failed gate gives a retake message with the reason instead of a result.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, computed_field, field_validator
from pydantic.dataclasses import dataclass

from leukoscreen.edge.scale import MAX_UM_PER_PX, MIN_UM_PER_PX


@dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class QualityConfig:
    """The `[quality]` section of the device configuration."""
    min_focus: StrictFloat = Field(15.0, ge=0, description="variance of the Laplacian of the grayscale field at "
                                                           "focus_um_per_px when the camera's pixel size is configured "
                                                           "([scale] um_per_px), else of the frame as captured")
    focus_um_per_px: StrictFloat = Field(0.474, ge=0, description=(
        "the pixel size min_focus refers to (all-aria's, 0.474 um per pixel): a frame of a configured pixel size "
        "more than 25% away from it is resampled to it before its focus is measured, so a camera of more pixels "
        "over the same field is not called out of focus; 0: always the frame as captured; else 0.02 to 5"))
    max_dark_fraction: StrictFloat = Field(0.5, ge=0, le=1, description="share of pixels with luminance < 20")
    max_clipped_fraction: StrictFloat = Field(0.15, ge=0, le=1, description="share of pixels white in all three "
                                              "channels (all-aria's fields at most 0.11; the same fields 15% "
                                              "brighter: 99.5% above 0.15)")
    max_blockiness: StrictFloat = Field(1.3, ge=0, description="JPEG block steps against steps inside blocks (1.0: none; "
                                                         "all-aria's fields at most 1.26, re-saved at quality 50 "
                                                         "1.39, at 30 1.62, medians); 0 turns the check off")
    max_noise: StrictFloat = Field(6.0, ge=0, description="pixel noise in grey levels (all-aria's fields 0.7; 0 turns "
                                                    "the check off)")
    min_stain_fraction: StrictFloat = Field(0.0005, ge=0, le=1, description="share of stained (purple) pixels")
    min_cells: StrictInt = Field(1, ge=0, description="white cells the cell finder must find")

    @field_validator("focus_um_per_px")
    @classmethod
    def _plausible(cls, value: float) -> float:
        if value and not MIN_UM_PER_PX <= value <= MAX_UM_PER_PX:
            raise ValueError(f"{value:g} um per pixel is not a blood-smear camera's (between {MIN_UM_PER_PX} and "
                             f"{MAX_UM_PER_PX}); 0 turns the resampling off")
        return value


class QualityReport(BaseModel):
    """What the gate measured on one field, and why it was refused (no reasons: usable)."""
    model_config = ConfigDict(frozen=True)
    focus: float
    dark_fraction: float
    clipped_fraction: float
    stain_fraction: float
    cells: int
    blockiness: float = 1.0    # records stored before the check have neither
    noise: float = 0.0
    focus_um_per_px: float | None = None   # the pixel size the focus was measured at (None: the frame's own)
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
    return _focus(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))


def _focus(gray: np.ndarray) -> float:
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def reason_name(reason: str) -> str:
    """A gate reason without its advice: "out of focus", "compressed image", "too dark", ..."""
    return reason.split(" (")[0].split(":")[0]


def blockiness(gray: np.ndarray, block: int = 8) -> float:
    """How much stronger the steps between neighbouring pixels of a uint8 grayscale field are across a JPEG
    block grid than inside the blocks: about 1.0 for an uncompressed or a high-quality frame, 1.3 and more for
    JPEG quality 50 and below. The grid's offset is not assumed (a cropped JPEG keeps its blocks): the strongest
    of the `block` offsets counts, in each direction, and the two directions are averaged."""
    ratios = []
    for steps in (cv2.reduce(cv2.absdiff(gray[:, 1:], gray[:, :-1]), 0, cv2.REDUCE_AVG, dtype=cv2.CV_32F)[0],
                  cv2.reduce(cv2.absdiff(gray[1:], gray[:-1]), 1, cv2.REDUCE_AVG, dtype=cv2.CV_32F)[:, 0]):
        if steps.size < 2 * block:
            return 1.0
        offsets = np.arange(steps.size) % block
        ratios.append(max(steps[offsets == k].mean() / max(steps[offsets != k].mean(), 1e-3)
                          for k in range(block)))
    return float(np.mean(ratios))


def noise_level(gray: np.ndarray) -> float:
    """The standard deviation of pixel noise, in grey levels, of a uint8 grayscale field: the median response of
    a Laplacian that cancels smooth shading (Immerkaer 1996, made robust with the median, as the smear's
    background dominates a field)."""
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    response = np.abs(cv2.filter2D(gray, cv2.CV_16S, kernel, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1])
    counts = np.cumsum(np.bincount(response.ravel()))
    return float(np.searchsorted(counts, counts[-1] / 2) / (0.6745 * 6))


FOCUS_SCALE_BAND = (0.8, 1.25)   # pixel-size ratios measured as they are (one camera's own spread)
FOCUS_PIXELS = 4_000_000         # at most this many pixels resampled to measure focus


def focus_at_scale(gray: np.ndarray, um_per_px: float | None, config: QualityConfig) -> tuple[float, float | None]:
    """The focus score and the pixel size it was measured at: the frame resampled to `config.focus_um_per_px`
    when its pixel size is known and outside FOCUS_SCALE_BAND of it, else the frame as it is (None)."""
    if not um_per_px or not config.focus_um_per_px:
        return _focus(gray), None
    factor = um_per_px / config.focus_um_per_px
    if FOCUS_SCALE_BAND[0] <= factor <= FOCUS_SCALE_BAND[1]:
        return _focus(gray), None
    if factor > 1:   # focus is a statistic of the texture: a central crop that stays within FOCUS_PIXELS will do
        keep = min(1.0, math.sqrt(FOCUS_PIXELS / (gray.size * factor * factor)))
        height, width = max(8, round(gray.shape[0] * keep)), max(8, round(gray.shape[1] * keep))
        top, left = (gray.shape[0] - height) // 2, (gray.shape[1] - width) // 2
        gray = gray[max(0, top):top + height, max(0, left):left + width]
    size = (round(gray.shape[1] * factor), round(gray.shape[0] * factor))
    if min(size) < 8:
        raise ValueError(f"at {um_per_px:g} um per pixel this frame is {size[0]}x{size[1]} pixels at the focus "
                         f"scale ({config.focus_um_per_px:g} um per pixel): check `[scale] um_per_px`")
    resampled = cv2.resize(gray, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    return _focus(resampled), config.focus_um_per_px


def check_quality(rgb: np.ndarray, stain_mask: np.ndarray, cells: int,
                  config: QualityConfig = QualityConfig(), um_per_px: float | None = None) -> QualityReport:
    """Scores and reasons for an RGB field, its stain mask (0/255) and the number of cells found. um_per_px: the
    camera's configured pixel size (focus is then measured at the scale min_focus refers to)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    focus, focus_scale = focus_at_scale(gray, um_per_px, config)
    dark = float(np.mean(gray < 20))
    clipped = float(np.mean((rgb == 255).all(axis=2)))
    stain = float(np.mean(stain_mask > 0))
    blocks, noise = blockiness(gray), noise_level(gray)
    reasons = []
    if dark > config.max_dark_fraction:
        reasons.append("too dark (check the lamp and exposure)")
    if clipped > config.max_clipped_fraction:
        reasons.append("overexposed (reduce the light or exposure)")
    if config.max_blockiness and blocks > config.max_blockiness:
        reasons.append("compressed image (JPEG blocks): set the camera to an uncompressed or high-quality format")
    if config.max_noise and noise > config.max_noise:
        reasons.append("too noisy (more light, a lower gain or ISO)")
    if focus < config.min_focus and not reasons:
        reasons.append("out of focus")
    if stain < config.min_stain_fraction and not reasons:
        reasons.append("no stained cells visible (check the slide and stain)")
    elif cells < config.min_cells and not reasons:
        reasons.append("no white cells found (move to another field)")
    return QualityReport(focus=focus, dark_fraction=dark, clipped_fraction=clipped, stain_fraction=stain,
                         cells=cells, blockiness=blocks, noise=noise, focus_um_per_px=focus_scale,
                         reasons=tuple(reasons))
