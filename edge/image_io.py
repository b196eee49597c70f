"""Decoding image files and bytes into 8-bit RGB arrays, with clear errors for bad input.

Handles JPEG, PNG, BMP and TIFF in grayscale, RGB, RGBA and 16-bit forms. Only those formats are decoded,
and only after their width and height have been read from the header (Pillow) and found within the pixel
limit: an image whose header cannot be read is never handed to the decoder (decompression bombs). A
truncated, corrupt or unsupported file raises `ImageReadError` naming the file and saying what to do.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 16_000_000  # refuse larger images (decompression bombs, mistaken scans): 48 MB decoded, enough for a
#                          12-Mpx Raspberry Pi HQ camera frame, within the device's memory
MAX_FILE_BYTES = 64_000_000  # larger files are refused before they are read (a 16-Mpx BMP is 48 MB)
HEADER_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "MPO"}  # Pillow's names; MPO: JPEG with extra frames (cameras)


class ImageReadError(ValueError):
    """An image that cannot be used; the message names it and says what to do."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _jpeg_is_truncated(data: bytes) -> bool:
    # A complete JPEG ends with the End-Of-Image marker FFD9 (some writers pad with zeros).
    return data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9")


def _too_large(name: str, size: str) -> ImageReadError:
    return ImageReadError(f"{name}: {size} has more pixels than the {MAX_PIXELS:,}-pixel limit; resize it first.")


def _check_header(data: bytes, name: str) -> None:
    """Refuse, from the header alone (Pillow's open reads only the header), an image that is not one of the
    supported formats or that has more pixels than the limit."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height, kind = *image.size, image.format
    except Image.DecompressionBombError as error:
        raise _too_large(name, "the image") from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"{name}: not a readable image of a supported kind (JPEG, PNG, BMP, TIFF); check "
                             "the file.") from error
    if kind not in HEADER_FORMATS:
        raise ImageReadError(f"{name}: {kind} images are not supported; save it as JPEG, PNG, BMP or TIFF.")
    if width * height > MAX_PIXELS:
        raise _too_large(name, f"{width}x{height}")


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes into an HxWx3 uint8 RGB array.

    Grayscale is repeated into three channels, alpha is dropped, 16-bit is scaled to 8-bit.
    Raises ImageReadError for empty, truncated, oversized or undecodable data.
    """
    if not data:
        raise ImageReadError(f"{name}: the file is empty; re-export or re-capture the image.")
    if _jpeg_is_truncated(data):
        raise ImageReadError(f"{name}: the JPEG is truncated (no end marker); copy the file again.")
    _check_header(data, name)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    except cv2.error:  # e.g. over OpenCV's own size limit
        image = None
    if image is None:
        raise ImageReadError(
            f"{name}: not a readable image (supported: JPEG, PNG, BMP, TIFF); check the file.")
    if image.shape[0] * image.shape[1] > MAX_PIXELS:
        raise _too_large(name, f"{image.shape[1]}x{image.shape[0]}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageReadError(f"{name}: pixel type {image.dtype} is not supported; save as 8 or 16 bit.")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: no second copy of a large frame
    raise ImageReadError(f"{name}: {channels} colour channels are not supported; save as RGB.")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file into an HxWx3 uint8 RGB array (see `decode_image`)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:  # at most the limit and one byte: a huge or endless file is not read
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ImageReadError(f"{path}: cannot be read ({error.strerror}).") from error
    if len(data) > MAX_FILE_BYTES:
        raise ImageReadError(f"{path}: larger than {MAX_FILE_BYTES // 1_000_000} MB, too large for an image of at "
                             f"most {MAX_PIXELS:,} pixels; check the file.")
    return decode_image(data, str(path))
