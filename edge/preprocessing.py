"""The preprocessing every model input goes through, on the device and in training (thesis 3.4).

Resize to 256x256, 3x3 median filter, 3x3 sharpen, resize to the model input size, optionally mask the
bottom-right corner (where all-aria carries a scale-bar label) and take colour away (per-image colour
standardisation, Reinhard stain normalisation to a reference, or grayscale). Input and output are HxWx3
uint8 RGB arrays.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import cv2
import numpy as np

COLOUR_MODES = ("rgb", "standardize", "reinhard", "grayscale")
SHARPEN_KERNEL = np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=np.float32)
# Target of per-image colour standardisation: every channel gets this mean and standard deviation.
STANDARD_MEAN = 128.0
STANDARD_STD = 48.0
# all-aria's scale-bar label sits in about the bottom-right 34x34 pixels of its 224x224 fields.
SCALE_BAR_CORNER = 34 / 224


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of `preprocess`; stored in run folders and model bundles.

    resize: side of the intermediate square image (0 = skip the step).
    median: median filter aperture in pixels (0 = off; odd numbers >= 3).
    sharpen: apply the 3x3 sharpening kernel.
    input_size: side of the square model input in pixels.
    mask_corner: side of the bottom-right square to fill, as a fraction of the image side (0 = off).
    colour: "rgb", "standardize" (each channel to a fixed mean/std), "reinhard" (each image's L*a*b*
        statistics to the reference) or "grayscale" (3 equal channels).
    reference: for "reinhard": mean L*, a*, b* then their standard deviations (OpenCV's 8-bit L*a*b*),
        computed from the training images and kept with the run and the bundle.
    hsv_lower, hsv_upper: when set, keep only pixels within these OpenCV HSV bounds (the stained white
        cells) and set the background to black (thesis 3.16, the ODRNN's input).
    """
    resize: int = 256
    median: int = 3
    sharpen: bool = True
    input_size: int = 128
    mask_corner: float = 0.0
    colour: str = "rgb"
    reference: tuple = ()
    hsv_lower: tuple = ()
    hsv_upper: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "reference", tuple(float(v) for v in self.reference))
        object.__setattr__(self, "hsv_lower", tuple(int(v) for v in self.hsv_lower))
        object.__setattr__(self, "hsv_upper", tuple(int(v) for v in self.hsv_upper))
        if (self.hsv_lower or self.hsv_upper) and not valid_hsv_bounds(self.hsv_lower, self.hsv_upper):
            raise ValueError(f"preprocess.hsv_lower/hsv_upper = {self.hsv_lower}/{self.hsv_upper}: give three "
                             "values each (hue 0-179, saturation and value 0-255), lower <= upper")
        if self.reference and len(self.reference) != 6:
            raise ValueError(f"preprocess.reference has {len(self.reference)} numbers: give L*, a*, b* means "
                             "then their standard deviations (6)")
        if self.colour not in COLOUR_MODES:
            raise ValueError(f"preprocess.colour = {self.colour!r}: use one of {', '.join(COLOUR_MODES)}")
        if self.median and (self.median < 3 or self.median % 2 == 0):
            raise ValueError(f"preprocess.median = {self.median}: use 0 (off) or an odd number >= 3")
        if self.input_size < 8 or self.resize < 0:
            raise ValueError(f"preprocess.input_size = {self.input_size}, resize = {self.resize}: "
                             "input_size must be >= 8 and resize >= 0")
        if not 0.0 <= self.mask_corner < 0.5:
            raise ValueError(f"preprocess.mask_corner = {self.mask_corner}: use a fraction in [0, 0.5)")

    def to_dict(self) -> dict:
        return asdict(self) | {key: list(getattr(self, key)) for key in ("reference", "hsv_lower", "hsv_upper")}

    @classmethod
    def from_dict(cls, values: dict) -> "PreprocessConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown preprocessing keys: {', '.join(sorted(unknown))}")
        return cls(**values)


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


def valid_hsv_bounds(lower, upper) -> bool:
    if len(lower) != 3 or len(upper) != 3:
        return False
    limits = (179, 255, 255)
    return all(0 <= lo <= hi <= top for lo, hi, top in zip(lower, upper, limits))


def hsv_mask(rgb: np.ndarray, lower, upper) -> np.ndarray:
    """uint8 mask (0/255) of the pixels whose OpenCV HSV values lie within [lower, upper]."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    return cv2.inRange(hsv, np.array(lower, np.uint8), np.array(upper, np.uint8))


def keep_stained(rgb: np.ndarray, lower, upper) -> np.ndarray:
    """The image with everything outside the HSV bounds set to black."""
    return cv2.bitwise_and(rgb, rgb, mask=hsv_mask(rgb, lower, upper))


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
    image = rgb
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
