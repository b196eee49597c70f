"""The bundle's self-test: before a model decides anything, the device runs each model file it is about to
use on a few generated fields and compares the outputs with what the same file gave when it was converted.

A file that computes differently here (a runtime version or a CPU whose kernels treat the file otherwise, a
file replaced after its hash was taken) is refused, with the size of the difference. The inputs are made
with integer arithmetic only (no image library), so every machine makes the same bytes; their sha256 is in
the manifest. They are model inputs as they are, at the model's input size: the test checks the model file
and its runtime, not the preprocessing.
"""
from __future__ import annotations

import hashlib

import numpy as np

from leukoscreen.edge.runtimes import RuntimeProblem

SELF_TEST_FIELDS = 6
TOLERANCE = 0.15      # largest difference of a class probability from the converter's answer: the same file on
#                       other kernels of one runtime differs by up to 0.07 on these fields (XNNPACK against LiteRT's
#                       built-in kernels), a wrongly computing file by far more
GENERATOR = "leukoscreen generated fields, integer arithmetic, seed 2026"


class SelfTestFailed(RuntimeProblem):
    """A model file whose answers on the generated fields are not the ones recorded when it was converted."""


def generated_fields(size: int, count: int = SELF_TEST_FIELDS) -> np.ndarray:
    """count x size x size x 3 uint8 fields: a pale background, pink-grey red cells and a few purple nuclei,
    with pixel noise; the same bytes on every machine."""
    rng = np.random.default_rng(2026)
    y, x = np.mgrid[:size, :size]
    fields = np.empty((count, size, size, 3), np.int64)
    for field in fields:
        field[:] = (236, 228, 232)
        for colour, cells, radius in (((205, 170, 185), size // 5, size // 36), ((125, 70, 160), 2, size // 12)):
            for _ in range(cells):
                cx, cy = rng.integers(0, size, 2)
                r = int(rng.integers(radius // 2 + 1, radius + 2))
                field[(x - cx) ** 2 + (y - cy) ** 2 <= r * r] = colour
        field += rng.integers(-12, 13, field.shape)
    return np.clip(fields, 0, 255).astype(np.uint8)


def fields_sha256(fields: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(fields).tobytes()).hexdigest()


def largest_difference(outputs: np.ndarray, expected) -> float:
    return float(np.abs(np.asarray(outputs, np.float64) - np.asarray(expected, np.float64)).max())
