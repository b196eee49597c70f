"""One field through the screening pipeline: quality gate -> cell finder -> classification -> decision.

Plain values in, plain values out; the daemon and `leukoscreen classify` only wire this to a camera,
a store and displays. Results are screening aids for research use only, never a diagnosis.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from leukoscreen import RESEARCH_USE_NOTICE
from leukoscreen.edge.bundle import ModelBundle, load_bundle
from leukoscreen.edge.cell_finder import CellFinderConfig, crop, find_cells, stain_mask
from leukoscreen.edge.decision import Decision, blast_score, calibrate, decide
from leukoscreen.edge.preprocessing import preprocess
from leukoscreen.edge.quality import QualityConfig, QualityReport, check_quality

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default_bundle"


@dataclass(frozen=True)
class CellResult:
    box: tuple[int, int, int, int]
    predicted: str | None = None              # class, when the model reads single cells
    blast_score: float | None = None


@dataclass
class ScreeningResult:
    quality: QualityReport
    cells: list[CellResult]
    bundle: str
    probabilities: dict[str, float] = field(default_factory=dict)   # calibrated, field or mean over cells
    counts: dict[str, int] = field(default_factory=dict)
    blast_fraction: float | None = None
    decision: Decision | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)    # find_cells, quality, classify

    @property
    def message(self) -> str:
        return self.decision.wording if self.decision else f"{self.quality.message}. {RESEARCH_USE_NOTICE}"

    def to_dict(self) -> dict:
        return {
            "message": self.message, "notice": RESEARCH_USE_NOTICE,
            "decision": self.decision.code if self.decision else "retake",
            "blast_score": self.decision.score if self.decision else None,
            "quality": self.quality.to_dict(), "cells_found": len(self.cells),
            "cells": [{"box": list(c.box), "predicted": c.predicted, "blast_score": c.blast_score}
                      for c in self.cells],
            "probabilities": self.probabilities, "counts": self.counts,
            "blast_fraction": self.blast_fraction, "bundle": self.bundle, "timings_ms": self.timings_ms,
        }


class Screener:
    """Holds a loaded bundle and its runtime; `screen(rgb)` runs one field through the pipeline."""

    def __init__(self, bundle: ModelBundle | str | Path = DEFAULT_BUNDLE, fmt: str | None = None,
                 runtime: str = "auto", threads: int = 2, finder: CellFinderConfig = CellFinderConfig(),
                 quality: QualityConfig = QualityConfig(), providers: list[str] | None = None,
                 xnnpack: bool = True):
        self.bundle = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
        self.runner = self.bundle.runner(fmt, runtime, threads, providers, xnnpack)
        self.finder, self.quality = finder, quality
        manifest = self.bundle.manifest
        self.temperature = manifest["calibration"]["temperature"]
        self.decision = manifest["decision"]

    def _calibrated(self, images: np.ndarray) -> np.ndarray:
        return calibrate(self.runner.predict(images), self.temperature)

    def screen(self, rgb: np.ndarray) -> ScreeningResult:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 32:
            raise ValueError(f"a field must be an RGB image of at least 32x32 pixels, got shape {rgb.shape}")
        t0 = time.perf_counter()
        mask = stain_mask(rgb, self.finder)
        found = find_cells(rgb, self.finder, mask)
        t1 = time.perf_counter()
        report = check_quality(rgb, mask, len(found), self.quality)
        t2 = time.perf_counter()
        result = ScreeningResult(report, [CellResult(c.box) for c in found], self.bundle.title)
        result.timings_ms = {"find_cells": (t1 - t0) * 1e3, "quality": (t2 - t1) * 1e3}
        if not report.passed:
            return result
        names = self.bundle.class_names
        negative = self.decision["negative_classes"]
        config = self.bundle.preprocess
        if self.bundle.manifest["input_kind"] == "cell":
            probabilities = self._calibrated(np.stack([preprocess(crop(rgb, c), config) for c in found]))
            scores = blast_score(probabilities, names, negative)
            predicted = [names[i] for i in probabilities.argmax(axis=1)]
            result.cells = [CellResult(c.box, p, float(s)) for c, p, s in zip(found, predicted, scores)]
            result.counts = {name: predicted.count(name) for name in names}
            result.blast_fraction = float(np.mean([p not in negative for p in predicted]))
            score = float(scores.max())  # one suspicious cell is enough to refer
            mean = probabilities.mean(axis=0)
        else:
            mean = self._calibrated(preprocess(rgb, config)[None])[0]
            score = float(blast_score(mean[None], names, negative)[0])
        result.probabilities = {name: float(p) for name, p in zip(names, mean)}
        result.decision = decide(score, self.decision["threshold"], tuple(self.decision["indeterminate_band"]))
        result.timings_ms["classify"] = (time.perf_counter() - t2) * 1e3
        return result
