"""A model bundle on an analysed field: preprocessing -> the model (the field, or each white cell) ->
calibration -> the bundle's decision rule. And `screen`, the whole pipeline on one frame for
`leukoscreen classify`, assembled exactly as the daemon assembles it.

Plain values in, plain values out. Results are screening aids for research use only, never a diagnosis.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from leukoscreen.edge.bundle import ModelBundle, load_bundle
from leukoscreen.edge.capture_record import CaptureRecord, CellRecord, ModelAnswer, retake, screened
from leukoscreen.edge.cell_crops import cell_crop
from leukoscreen.edge.cell_finder import CellFinderConfig
from leukoscreen.edge.decision import Decision
from leukoscreen.edge.field_analysis import FieldAnalysis, analyse_field
from leukoscreen.edge.field_tiles import model_tiles
from leukoscreen.edge.preprocessing import preprocess
from leukoscreen.edge.quality import QualityConfig
from leukoscreen.edge.runtimes import ModelRunner, RuntimeOptions
from leukoscreen.edge.scale import ScaleConfig

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default_bundle"
NO_WHITE_CELLS = "no white cells found (move to another field)"


class ScreeningModel:
    """A loaded bundle and its runtime. `classify(rgb, field)` answers on a field that passed the gate."""

    def __init__(self, bundle: ModelBundle, runner: ModelRunner, fmt: str, notes: tuple[str, ...] = ()):
        self.bundle, self.runner, self.format = bundle, runner, fmt
        self.guard, self.guard_statistics = bundle.manifest.guard, bundle.guard_statistics
        self.notes = bundle.notes + (() if self.guard else (
            "this bundle has no unfamiliar-image guard: it answers on any field that passes the quality gate "
            "(`leukoscreen bundle guard` adds one)",)) + notes

    @classmethod
    def open(cls, bundle: ModelBundle | str | Path = DEFAULT_BUNDLE,
             options: RuntimeOptions = RuntimeOptions(), fallback: bool = True) -> "ScreeningModel":
        """The bundle's model through the device runtime, checked and self-tested; a format that fails is
        replaced by another of the bundle's formats that passes (see the notes), unless fallback is False (a
        command asked for that format by name: it measures that file or nothing)."""
        bundle = bundle if isinstance(bundle, ModelBundle) else load_bundle(bundle)
        if not fallback:
            fmt = options.format or bundle.manifest.default_format
            return cls(bundle, bundle.runner(options.with_format(fmt)), fmt)
        runner, fmt, notes = bundle.open_checked(options)
        return cls(bundle, runner, fmt, notes)

    @property
    def title(self) -> str:
        return self.bundle.title

    @property
    def sha256(self) -> str:
        """The hash of the model file in use (what a stored result names)."""
        return self.bundle.entry(self.format).sha256

    def _probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probabilities and, with a guard, each image's guard score (None without one)."""
        probabilities, extra = self.runner.predict_all(images)
        scores = self.guard.score(extra, self.guard_statistics) if self.guard else None
        adaptation = self.bundle.manifest.adaptation
        if adaptation:  # refitted on the site's own images: the head reads the guard's class means
            probabilities = adaptation.probabilities(extra, self.guard_statistics)
        return self.bundle.manifest.calibration.apply(probabilities), scores

    def classify(self, rgb: np.ndarray, field: FieldAnalysis) -> ModelAnswer:
        started = time.perf_counter()
        manifest = self.bundle.manifest
        names, rule, config = manifest.class_names, manifest.decision, manifest.preprocess
        values = {}
        if manifest.input_kind == "cell":
            if not field.cells:
                raise ValueError(NO_WHITE_CELLS)
            values["um_per_px"], values["scale_source"] = field.scale.um_per_px, field.scale.source
            if field.scale.um_per_px is None:  # too few red cells to tell: the training data's pixel size
                values["um_per_px"] = manifest.um_per_px or manifest.cell.effective_um_per_px
                values["scale_source"] = "assumed (the model's training scale)"
            parts = [cell_crop(rgb, c, values["um_per_px"], manifest.cell) for c in field.cells]
        elif field.scale.source == "configured" and manifest.field_px:   # a calibrated camera: the model's scale
            parts = model_tiles(rgb, field.scale.um_per_px, manifest.um_per_px, manifest.field_px)
            values |= {"um_per_px": field.scale.um_per_px, "scale_source": "configured",
                       "tiles": len(parts)}
        else:
            parts = [rgb]
        probabilities, guard = self._probabilities(np.stack([preprocess(p, config) for p in parts]))
        scores = rule.score(probabilities, names)
        unfamiliar = guard > self.guard.threshold if guard is not None else np.zeros(len(parts), bool)
        familiar = ~unfamiliar
        if manifest.input_kind == "cell":
            predicted = [names[i] for i in probabilities.argmax(axis=1)]
            values["cells"] = tuple(CellRecord(box=c.box, predicted=p, blast_score=float(s), unfamiliar=bool(u))
                                    for c, p, s, u in zip(field.cells, predicted, scores, unfamiliar))
            values["counts"] = {name: sum(p == name for p, f in zip(predicted, familiar) if f) for name in names}
            read = [p for p, f in zip(predicted, familiar) if f]
            values["blast_fraction"] = float(np.mean([p not in rule.negative_classes for p in read])) if read else None
        # one suspicious cell (or tile) is enough to refer; those the model cannot read may hide one
        score = float(scores[familiar].max()) if familiar.any() else float(scores.max())
        mean = probabilities[familiar].mean(axis=0) if familiar.any() else probabilities.mean(axis=0)
        decision = rule.decide(score)
        if not familiar.any() or (unfamiliar.any() and decision.code == "no_blasts"):
            decision = Decision("unfamiliar", score)
        values["guard_score"] = None if guard is None else float(guard.max())
        if decision.code == "unfamiliar":  # the model's numbers on an image it was not made for mean nothing
            return ModelAnswer(bundle=self.title, decision=decision.code, message=decision.wording,
                               classify_ms=(time.perf_counter() - started) * 1e3, **values)
        return ModelAnswer(bundle=self.title, decision=decision.code, message=decision.wording,
                           blast_score=decision.score, probabilities={n: float(p) for n, p in zip(names, mean)},
                           classify_ms=(time.perf_counter() - started) * 1e3, **values)


def cell_records(field: FieldAnalysis) -> tuple[CellRecord, ...]:
    return tuple(CellRecord(box=cell.box) for cell in field.cells)


def screen(rgb: np.ndarray, model: ScreeningModel, finder: CellFinderConfig = CellFinderConfig(),
           quality: QualityConfig = QualityConfig(), compared: tuple[ScreeningModel, ...] = (),
           scale: ScaleConfig = ScaleConfig(), **values) -> CaptureRecord:
    """One frame through the whole pipeline: field analysis once, then the deciding model and any compared
    ones, then one record. Raises ValueError for a frame that is not an RGB image of at least 32x32."""
    cell_models = any(m.bundle.manifest.input_kind == "cell" for m in (model, *compared))
    field = analyse_field(rgb, finder, quality, scale if cell_models or scale.um_per_px else None)
    timings = dict(field.timings_ms)
    report = field.quality
    if report.passed and model.bundle.manifest.input_kind == "cell" and not field.cells:
        # a cell model without a white cell: no decision, whatever the gate was set to (min_cells = 0)
        report = report.model_copy(update={"reasons": (NO_WHITE_CELLS,)})
    if not report.passed:
        return retake(report, report.message, model.title, model.sha256, cells_found=len(field.cells),
                      cells=cell_records(field), timings_ms=timings, **values)
    answer = model.classify(rgb, field)
    timings["classify"] = answer.classify_ms
    others = tuple(compare(other, rgb, field) for other in compared)
    return screened(answer, report, cell_records(field), others, model.sha256, timings_ms=timings, **values)


def compare(model: ScreeningModel, rgb: np.ndarray, field: FieldAnalysis) -> ModelAnswer:
    """A compared bundle's answer; its failure is recorded as its answer and never stops the capture."""
    try:
        return model.classify(rgb, field)
    except ValueError as error:  # RuntimeProblem included
        return ModelAnswer(bundle=model.title, decision="error", message=str(error))
