"""One capture's record, the same typed value from the trigger to the store, the web page and the LCD.

A record is a screening answer (no_blasts, indeterminate, possible_blasts), unfamiliar (not screened: the
model's guard found the field unlike its training images), a retake (the field was not
usable: the quality gate's reasons) or an error (no frame: camera missing; not stored: storage full). It
is stored as JSON beside its image and served back as it was stored. Research use only.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from leukoscreen import RESEARCH_USE_NOTICE
from leukoscreen.edge.decision import DecisionCode
from leukoscreen.edge.quality import QualityReport

Outcome = Literal["no_blasts", "indeterminate", "possible_blasts", "unfamiliar", "retake", "error"]


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)


class CellRecord(Record):
    box: tuple[int, int, int, int] = Field(description="x, y, width, height in field pixels")
    predicted: str | None = Field(None, description="the cell's class, when the model reads single cells")
    blast_score: float | None = None
    unfamiliar: bool = Field(False, description="the guard found this cell unlike the model's training cells; it "
                                                "does not count towards the field's answer")


class ModelAnswer(Record):
    """What one model bundle answered on a field."""
    bundle: str = Field(description="name and version of the bundle")
    decision: DecisionCode | Literal["error"]
    message: str
    blast_score: float | None = None
    guard_score: float | None = Field(None, description="the unfamiliar-image guard's score (the field's; a cell "
                                                        "model's: the largest of its cells'); none without a guard")
    probabilities: dict[str, float] = Field(default_factory=dict, description="calibrated; the field's, or the "
                                                                              "mean over its cells")
    counts: dict[str, int] = Field(default_factory=dict, description="cells per class (cell models)")
    blast_fraction: float | None = Field(None, description="share of cells called blast-like (cell models)")
    cells: tuple[CellRecord, ...] = Field((), description="per-cell answers (cell models)", exclude=True)
    um_per_px: float | None = Field(None, description="the pixel size the cells were cut at (cell models), or the "
                                                      "configured one the field was resampled from (field models)")
    scale_source: str = ""
    tiles: int | None = Field(None, description="field models on a configured pixel size: the tiles of the model's "
                                                "field the frame was read in (the most blast-like decides)")
    classify_ms: float = Field(0.0, exclude=True)


class CaptureRecord(Record):
    capture_id: int | None = Field(None, description="the store's id of the capture; none until it is stored (and "
                                                     "not part of the stored JSON)")
    decision: Outcome
    message: str = Field(description="the wording shown to the technician, always with 'Research use only'")
    notice: str = RESEARCH_USE_NOTICE
    blast_score: float | None = None
    guard_score: float | None = Field(None, description="the deciding bundle's unfamiliar-image guard score")
    quality: QualityReport | None = Field(None, description="the quality gate (none when there was no frame)")
    cells_found: int = 0
    cells: tuple[CellRecord, ...] = ()
    probabilities: dict[str, float] = Field(default_factory=dict)
    counts: dict[str, int] = Field(default_factory=dict)
    blast_fraction: float | None = None
    um_per_px: float | None = Field(None, description="the field's pixel size in microns, as the model read it")
    scale_source: str = Field("", description="configured, estimated (from the red cells), or assumed (the model's "
                                              "training scale, when the field gave no estimate)")
    tiles: int | None = Field(None, description="the tiles a field model read the frame in (configured pixel size)")
    bundle: str = Field("", description="the deciding bundle")
    bundle_sha256: str = Field("", description="sha256 of the deciding bundle's model file")
    source: str = Field("camera", description="camera, or 'upload: NAME'")
    sample_id: str = ""
    compared: tuple[ModelAnswer, ...] = Field((), description="other bundles' answers on the same field; they "
                                                              "never decide")
    timings_ms: dict[str, float] = Field(default_factory=dict)

    @property
    def stored(self) -> bool:
        """Whether this kind of record is kept in the store (errors are not: there is nothing to keep)."""
        return self.decision != "error"


def retake(quality: QualityReport | None, reason: str, bundle: str, bundle_sha256: str, **values) -> CaptureRecord:
    """A field that cannot be screened: the gate's reasons (or why the frame is unusable)."""
    return CaptureRecord(decision="retake", message=f"{reason}. {RESEARCH_USE_NOTICE}", quality=quality,
                         bundle=bundle, bundle_sha256=bundle_sha256, **values)


def screened(answer: ModelAnswer, quality: QualityReport, cells: tuple[CellRecord, ...],
             compared: tuple[ModelAnswer, ...], bundle_sha256: str, **values) -> CaptureRecord:
    """A screened field: the deciding bundle's answer, the cells found, the other bundles' answers."""
    return CaptureRecord(decision=answer.decision, message=answer.message, blast_score=answer.blast_score,
                         guard_score=answer.guard_score,
                         quality=quality, cells_found=len(cells), cells=answer.cells or cells,
                         probabilities=answer.probabilities, counts=answer.counts,
                         blast_fraction=answer.blast_fraction, um_per_px=answer.um_per_px,
                         scale_source=answer.scale_source, tiles=answer.tiles, bundle=answer.bundle,
                         bundle_sha256=bundle_sha256,
                         compared=compared, **values)


def failed(message: str, **values) -> CaptureRecord:
    """No screening and nothing to store (camera missing, storage full)."""
    return CaptureRecord(decision="error", message=message, **values)
