"""`leukoscreen robustness BUNDLE --data DIR...`: what a clinic gets, across data sets and acquisitions.

Every image goes through the whole device pipeline as the device runs it (`edge/screening.py`: stain mask ->
cell finder -> quality gate -> model -> guard -> calibration -> decision), never the model alone. Sources:
- a data set with leukemia labels (all-aria, C-NMC): blast-like or not from its binary task; when the bundle
  was trained on it, only its test part (the bundle's split.csv), so nothing it learnt from is counted;
- any other folder of images (pbc-subset, bccd-wbc: normal white cells from other labs): every image is
  non-blast, and images in a folder named `platelet` hold no white cell (the right answer is "not screened").
The first source's images are also perturbed as a cheaper or another acquisition would (JPEG compression,
exposure, blur, noise, another magnification, a camera of twice the resolution, every stained cell removed).

Per source and perturbation: the shares of the answers (no blasts, indeterminate, possible blasts, not
screened), sensitivity (blast images not answered "No blasts suggested"), specificity (non-blast images
answered "No blasts suggested") and the share of confidently wrong answers among the screened images (blast
score >= 0.9 on a non-blast image, <= 0.1 on a blast image). Research use only.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from leukoscreen import RESEARCH_USE_NOTICE
from leukoscreen.edge.bundle import load_bundle
from leukoscreen.edge.capture_record import CaptureRecord
from leukoscreen.edge.cell_finder import CellFinderConfig, stain_mask
from leukoscreen.edge.image_io import ImageReadError, is_image_file, read_image
from leukoscreen.edge.quality import QualityConfig, reason_name
from leukoscreen.edge.scale import ScaleConfig
from leukoscreen.edge.screening import ScreeningModel, screen
from leukoscreen.training.datasets import DataError, open_dataset
from leukoscreen.training.prepared_data import prepare
from leukoscreen.training.splits import SplitError, load_split

ANSWERS = ("no_blasts", "indeterminate", "possible_blasts", "not_screened")
NO_CELL_FOLDERS = {"platelet", "platelets"}


def _jpeg(quality: int) -> Callable[[np.ndarray], np.ndarray]:
    def perturb(rgb):
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return perturb


def _exposure(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda rgb: np.clip(rgb.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def _zoom(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    """Another magnification of the same field, at the same pixel count: cells `factor` times larger."""
    def perturb(rgb):
        height, width = rgb.shape[:2]
        scaled = cv2.resize(rgb, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA
                            if factor < 1 else cv2.INTER_CUBIC)
        if factor >= 1:
            top, left = (scaled.shape[0] - height) // 2, (scaled.shape[1] - width) // 2
            return scaled[top:top + height, left:left + width]
        pad_y, pad_x = height - scaled.shape[0], width - scaled.shape[1]
        return cv2.copyMakeBorder(scaled, pad_y // 2, pad_y - pad_y // 2, pad_x // 2, pad_x - pad_x // 2,
                                  cv2.BORDER_REFLECT)
    return perturb


def _noise(rgb: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(int(rgb[::7, ::7].sum()) % 2**32)
    return np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)


def _cells_removed(rgb: np.ndarray) -> np.ndarray:
    """Every stained (purple) pixel, and a margin around it, painted over from its surroundings."""
    mask = cv2.dilate(stain_mask(rgb), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    return cv2.inpaint(rgb, mask, 5, cv2.INPAINT_TELEA)


PERTURBATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "jpeg q30": _jpeg(30), "jpeg q50": _jpeg(50), "exposure x0.85": _exposure(0.85),
    "exposure x1.15": _exposure(1.15), "blur (sigma 1.5)": lambda rgb: cv2.GaussianBlur(rgb, (0, 0), 1.5),
    "noise (sigma 8)": _noise, "zoom x0.75": _zoom(0.75), "zoom x1.33": _zoom(4 / 3),
    "camera 2x resolution": lambda rgb: cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC),
    "cells removed": _cells_removed,
}


@dataclass(frozen=True)
class Item:
    path: str
    truth: str          # "blast", "non_blast" or "no_cell"


def held_out_fields(bundle_split: Path, source: str) -> set[str] | None:
    """A cell bundle's split lists crops (`LABEL/SOURCE-FIELD-cN.png`, see training/cell_data.py): the fields
    of `source` whose every crop is in the test part, by file stem; None when no crop came from `source`."""
    parts: dict[str, set[str]] = {}
    for row in load_split(bundle_split):
        name = Path(row.path).name
        if name.startswith(f"{source}-") and "-c" in name:
            parts.setdefault(name[len(source) + 1:name.rindex("-c")], set()).add(row.part)
    return {stem for stem, seen in parts.items() if seen == {"test"}} if parts else None


def source_items(folder: Path, bundle_split: Path | None, cell_bundle: bool = False) -> tuple[str, list[Item]]:
    """The images of a source with their truth, and how they were chosen."""
    try:
        dataset = open_dataset(folder)
    except DataError:
        dataset = None
    labelled = dataset is not None and {"benign", "hem"} & set(dataset.views.get("binary", {}).values())
    if labelled and cell_bundle:
        prepared = prepare(folder, "binary", all_test=True)
        negative = prepared.class_names.index(next(c for c in prepared.class_names if c in ("benign", "hem")))
        stems = held_out_fields(bundle_split, dataset.root.name) if bundle_split else None
        chosen = ("every image (no cell of it in the bundle's split)" if stems is None else
                  "the fields whose cells are all in the test part of the bundle's split")
        return chosen, [Item(path, "non_blast" if label == negative else "blast")
                        for path, label in zip(prepared.paths, prepared.labels)
                        if stems is None or Path(path).stem in stems]
    if labelled:
        try:
            prepared = prepare(folder, "binary", split_file=bundle_split)
            chosen = "the test part of the bundle's split"
            rows = [(prepared.paths[i], prepared.labels[i]) for i in prepared.part("test")]
        except SplitError:
            prepared = prepare(folder, "binary", all_test=True)
            chosen = "every image (not in the bundle's split)"
            rows = list(zip(prepared.paths, prepared.labels))
        negative = prepared.class_names.index(next(c for c in prepared.class_names if c in ("benign", "hem")))
        return chosen, [Item(path, "non_blast" if label == negative else "blast") for path, label in rows]
    files = sorted(p for p in folder.rglob("*") if is_image_file(p))
    chosen = "every image: normal cells (none blast-like); platelet folders hold no white cell"
    stems = held_out_fields(bundle_split, folder.resolve().name) if cell_bundle and bundle_split else None
    if stems is not None:  # the cell model learnt from some of these images: only the test part's
        chosen += "; only the images whose cell is in the test part of the bundle's split"
        files = [p for p in files if p.stem in stems]
    return chosen, [Item(str(p), "no_cell" if p.parent.name.lower() in NO_CELL_FOLDERS else "non_blast")
                    for p in files]


def summarize_answers(answers: list[tuple[str, str, float | None, str]]) -> dict:
    """answers: (truth, answer, blast score, why not screened) per image."""
    n = len(answers)
    row = {"n": n} | {answer: sum(a == answer for _, a, _, _ in answers) / max(n, 1) for answer in ANSWERS}
    reasons = Counter(why for _, a, _, why in answers if a == "not_screened")
    row["not screened, main reason"] = (f"{reasons.most_common(1)[0][0]} ({reasons.most_common(1)[0][1]})"
                                        if reasons else None)
    blast = [a for t, a, _, _ in answers if t == "blast"]
    non_blast = [a for t, a, _, _ in answers if t == "non_blast"]
    row["sensitivity"] = 1 - blast.count("no_blasts") / len(blast) if blast else None
    row["specificity"] = non_blast.count("no_blasts") / len(non_blast) if non_blast else None
    row["missed blast images"] = blast.count("no_blasts")
    row["non-blast images referred"] = non_blast.count("possible_blasts")
    screened = [(t, s) for t, a, s, _ in answers if a != "not_screened"]
    wrong = [t for t, s in screened if (t != "blast" and s >= 0.9) or (t == "blast" and s <= 0.1)]
    row["confidently wrong among screened"] = len(wrong) / len(screened) if screened else None
    return row


def device_answer(rgb: np.ndarray, model: ScreeningModel, finder: CellFinderConfig, quality: QualityConfig,
                  scale: ScaleConfig) -> tuple[str, float | None, str]:
    """The answer, the blast score and, when not screened, why (the gate's first reason, in its first words)."""
    try:
        record = screen(rgb, model, finder, quality, scale=scale)
    except ValueError:
        return "not_screened", None, "not an image"
    return record_answer(record)


def record_answer(record: CaptureRecord) -> tuple[str, float | None, str]:
    """A capture record as (answer, blast score, why not screened)."""
    if record.decision == "retake":
        reasons = record.quality.reasons if record.quality else ()
        return "not_screened", None, reason_name(reasons[0]) if reasons else "retake"
    if record.decision == "error":
        return "not_screened", None, "error"
    if record.decision == "unfamiliar":
        return "not_screened", record.blast_score, "unfamiliar image"
    return record.decision, record.blast_score, ""


def robustness(bundle_path: Path, sources: list[Path], out: Path | None = None,
               perturbations: list[str] | None = None, finder: CellFinderConfig = CellFinderConfig(),
               quality: QualityConfig = QualityConfig(), limit: int | None = None,
               scale: ScaleConfig = ScaleConfig()) -> dict:
    model = ScreeningModel.open(bundle_path)
    split = model.bundle.path / "split.csv"
    names = list(PERTURBATIONS) if perturbations is None else perturbations
    unknown = [name for name in names if name not in PERTURBATIONS]
    if unknown:
        raise ValueError(f"unknown perturbation(s) {unknown}; choose from {', '.join(PERTURBATIONS)}")
    rows = []
    for index, folder in enumerate(sources):
        chosen, items = source_items(Path(folder), split if split.exists() else None,
                                     model.bundle.manifest.input_kind == "cell")
        items = items[::max(1, len(items) // limit)][:limit] if limit else items  # spread over the classes
        kinds = [("as acquired", None)] + ([(name, PERTURBATIONS[name]) for name in names] if index == 0 else [])
        for kind, perturb in kinds:
            print(f"{Path(folder).name}: {kind} ({len(items)} images)...", flush=True)
            answers = []
            for item in items:
                try:
                    rgb = read_image(item.path)
                except ImageReadError:
                    continue
                answers.append((item.truth, *device_answer(perturb(rgb) if perturb else rgb, model, finder, quality,
                                                       scale)))
            rows.append({"source": Path(folder).name, "images": chosen, "perturbation": kind}
                        | summarize_answers(answers))
    result = {"bundle": model.title, "measures": "the whole device pipeline: quality gate, cell finder, model, "
              "unfamiliar-image guard (when the bundle has one), decision (not the model alone)", "notice": RESEARCH_USE_NOTICE, "rows": rows}
    print(robustness_table(result))
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "robustness.json").write_text(json.dumps(result, indent=2))
        (out / "robustness.md").write_text(robustness_table(result) + "\n")
    return result


def write_perturbed(bundle_path: Path, data: Path, part: str, perturbation: str, out: Path,
                    limit: int | None = None, seed: int = 0) -> int:
    """A labelled folder (OUT/CLASS/...png) of one part of a bundle's split, perturbed: another acquisition of
    images the model never learnt from, to try `leukoscreen adapt` on. Returns the images written."""
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {perturbation!r}; choose from {', '.join(PERTURBATIONS)}")
    manifest = load_bundle(bundle_path).manifest
    rows = [row for row in load_split(Path(bundle_path) / manifest.training.split_file) if row.part == part]
    if not rows:
        raise ValueError(f"{bundle_path}: its split has no {part!r} part (train, val or test)")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: give a number of images of 1 or more (leave it out for all)")
    if limit:
        rows = [rows[i] for i in sorted(np.random.default_rng(seed).permutation(len(rows))[:limit])]
    if out.exists():
        raise ValueError(f"{out} exists: give a new folder")
    if part == "train":
        print("note: the model was trained on these images: a test of adapt on them says little")
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
    try:
        for row in rows:
            rgb = PERTURBATIONS[perturbation](read_image(Path(data) / row.path))
            target = building / row.label / (Path(row.path).stem + ".png")
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        os.rename(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    print(f"{out}: {len(rows)} images of the {part} part, {perturbation}; one folder per class")
    return len(rows)


COLUMNS = ["source", "perturbation", "n", "no_blasts", "indeterminate", "possible_blasts", "not_screened",
           "not screened, main reason", "sensitivity", "specificity", "missed blast images", "non-blast images referred",
           "confidently wrong among screened"]


def robustness_rows(result: dict) -> list[dict]:
    """The table's rows as text (shares as percentages)."""
    def cell(column, value):
        if value is None:
            return "-"
        if column in ("n", "missed blast images", "non-blast images referred") or isinstance(value, str):
            return str(value)
        return f"{100 * value:.1f}%"
    return [{c: cell(c, row.get(c)) for c in COLUMNS} for row in result["rows"]]


def robustness_table(result: dict) -> str:
    lines = [f"Robustness of {result['bundle']} ({result['measures']}). {result['notice']}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in robustness_rows(result)]
    return "\n".join(lines)
