"""The preprocessing every model input goes through, on the device and in training (thesis 3.4).

The central square of the image (a non-square frame is cropped, not squashed), resized to 256x256, 3x3
median filter, 3x3 sharpen, resize to the model input size, optionally keep only the stained pixels, mask the
bottom-right corner (where all-aria carries a scale-bar label) and take colour away (per-image colour
standardisation, Reinhard stain normalisation to a reference, or grayscale). Input and output are HxWx3
uint8 RGB arrays.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Literal, get_args

import cv2
import numpy as np
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from leukoscreen.edge.stain import check_hsv_bounds, keep_stained

ColourMode = Literal["rgb", "standardize", "reinhard", "grayscale"]
COLOUR_MODES = get_args(ColourMode)
SHARPEN_KERNEL = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32)
# Target of per-image colour standardisation: every channel gets this mean and standard deviation.
STANDARD_MEAN = 128.0
STANDARD_STD = 48.0
# all-aria's scale-bar label sits in about the bottom-right 34x34 pixels of its 224x224 fields.
SCALE_BAR_CORNER = 34 / 224


@dataclass(frozen=True, config=ConfigDict(extra="forbid", allow_inf_nan=False))
class PreprocessConfig:
    """Parameters of `preprocess`; stored in run folders and in the bundle manifest (`preprocess`)."""
    resize: int = Field(256, ge=0, le=4096, description="side of the intermediate square image in pixels (0 = skip)")
    median: int = Field(3, description="median filter aperture in pixels (0 = off; odd numbers >= 3)")
    sharpen: bool = Field(True, description="apply the 3x3 sharpening kernel")
    input_size: int = Field(128, ge=8, le=1024, description="side of the square model input in pixels")
    mask_corner: float = Field(0.0, description="side of the bottom-right square filled with the image's median "
                                                "colour, as a fraction of the image side (0 = off; all-aria's "
                                                "scale-bar label)")
    colour: ColourMode = Field("rgb", description="rgb; standardize (each channel to a fixed mean and standard "
                                                  "deviation); reinhard (each image's L*a*b* statistics moved to "
                                                  "`reference`); grayscale (three equal channels)")
    reference: tuple[float, ...] = Field((), description="for reinhard: mean L*, a*, b* then their standard "
                                                         "deviations (OpenCV's 8-bit L*a*b*), from the training images")
    hsv_lower: tuple[int, ...] = Field((), description="when set, only the stained pixels (OpenCV HSV within "
                                                       "hsv_lower-hsv_upper) are kept and the rest is black (the "
                                                       "ODRNN's input, thesis 3.16)")
    hsv_upper: tuple[int, ...] = Field((), description="upper HSV bound, with hsv_lower")

    def __post_init__(self):
        if self.hsv_lower or self.hsv_upper:
            check_hsv_bounds(self.hsv_lower, self.hsv_upper, "preprocess")
        if self.reference and len(self.reference) != 6:
            raise ValueError(f"preprocess.reference has {len(self.reference)} numbers: give L*, a*, b* means "
                             "then their standard deviations (6)")
        if self.median and (self.median % 2 == 0 or not 3 <= self.median <= 31):
            raise ValueError(f"preprocess.median = {self.median}: use 0 (off) or an odd number from 3 to 31")
        if self.resize and self.resize < self.input_size:
            raise ValueError(f"preprocess.resize = {self.resize} is smaller than input_size = {self.input_size}: "
                             "use 0 (no intermediate size) or at least the input size")
        if not 0.0 <= self.mask_corner < 0.5:
            raise ValueError(f"preprocess.mask_corner = {self.mask_corner}: use a fraction in [0, 0.5)")

    def to_dict(self) -> dict:
        return asdict(self) | {key: list(getattr(self, key)) for key in ("reference", "hsv_lower", "hsv_upper")}

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessConfig":
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {', '.join(sorted(unknown))}")
        return cls(**values)


def central_square(rgb: np.ndarray) -> np.ndarray:
    """The largest centred square of an image: a non-square camera frame is cropped, never squashed."""
    height, width = rgb.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return rgb[top:top + side, left:left + side]


def mask_corner(rgb: np.ndarray, fraction: float) -> np.ndarray:
    """Fill the bottom-right square (side = fraction of the image side) with the image's median colour."""
    side = int(round(fraction * min(rgb.shape[:2])))
    if side == 0:
        return rgb
    out = rgb.copy()
    fill = np.median(rgb.reshape(-1, 3), axis=0).astype(np.uint8)
    out[-side:, -side:] = fill
    return out


def standardize_colour(rgb: np.ndarray) -> np.ndarray:
    """Shift and scale each channel to STANDARD_MEAN / STANDARD_STD, removing per-image colour cast."""
    pixels = rgb.astype(np.float32)
    mean = pixels.mean(axis=(0, 1))
    std = pixels.std(axis=(0, 1)) + 1e-6
    out = (pixels - mean) / std * STANDARD_STD + STANDARD_MEAN
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def lab_statistics(rgb: np.ndarray) -> np.ndarray:
    """Mean and standard deviation of L*, a*, b* (OpenCV's 8-bit L*a*b*): 6 numbers."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return np.concatenate([lab.mean(axis=0), lab.std(axis=0)])


def reinhard(rgb: np.ndarray, reference: tuple) -> np.ndarray:
    """Reinhard et al. (2001) colour transfer: each L*a*b* channel shifted and scaled to the reference's
    mean and standard deviation (stain normalisation)."""
    if len(reference) != 6:
        raise ValueError("Reinhard normalisation needs its reference (6 numbers in preprocess.reference); "
                         "the run or bundle lacks it: retrain with --colour reinhard")
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32)
    statistics = lab_statistics(rgb)
    mean, std = statistics[:3], statistics[3:] + 1e-6
    target_mean, target_std = np.array(reference[:3], np.float32), np.array(reference[3:], np.float32)
    out = (lab - mean) / std * target_std + target_mean
    return cv2.cvtColor(np.clip(np.rint(out), 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def to_grayscale(rgb: np.ndarray) -> np.ndarray:
    """Luminance repeated into three channels, so the model input shape stays HxWx3."""
    return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def preprocess(rgb: np.ndarray, config: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Apply the configured steps to an HxWx3 uint8 RGB image; returns input_size x input_size x 3 uint8."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"preprocess expects an HxWx3 uint8 RGB image, got shape {rgb.shape} "
                         f"and type {rgb.dtype}")
    image = central_square(rgb)
    if config.resize:
        image = cv2.resize(image, (config.resize, config.resize), interpolation=cv2.INTER_AREA)
    if config.median:
        image = cv2.medianBlur(image, config.median)
    if config.sharpen:
        image = cv2.filter2D(image, -1, SHARPEN_KERNEL, borderType=cv2.BORDER_REFLECT)
    image = cv2.resize(image, (config.input_size, config.input_size), interpolation=cv2.INTER_AREA)
    if config.hsv_lower:  # before the colour step: the bounds are in the image's own colours
        image = keep_stained(image, config.hsv_lower, config.hsv_upper)
    if config.mask_corner:
        image = mask_corner(image, config.mask_corner)
    if config.colour == "standardize":
        image = standardize_colour(image)
    elif config.colour == "reinhard":
        image = reinhard(image, config.reference)
    elif config.colour == "grayscale":
        image = to_grayscale(image)
    return np.ascontiguousarray(image)
