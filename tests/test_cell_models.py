"""Single-cell screening: crops of one physical size, the cell set built by the device's own finder, a cell
bundle trained and converted from it, and the device deciding a field from its cells."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import write_rgb

from leukoscreen.edge.cell_crops import CellGeometry, cell_crop
from leukoscreen.edge.cell_finder import CellFinderConfig, FoundCell, find_cells
from leukoscreen.edge.field_analysis import analyse_field
from leukoscreen.edge.manifest import Manifest
from leukoscreen.edge.scale import ScaleConfig, estimate_scale
from leukoscreen.edge.screening import ScreeningModel, screen
from leukoscreen.edge.synthetic_smear import synthetic_field
from leukoscreen.training.datasets import open_dataset


def test_a_crop_covers_the_same_microns_at_any_pixel_size():
    """The same field at two magnifications gives nearly the same crop: the crop is physical, not pixels."""
    geometry = CellGeometry(side_um=24, pixels=48, effective_um_per_px=0.6)
    field = synthetic_field(2, size=480)
    cell = field.cells[0]
    x, y, w, h = cell.box
    found = FoundCell(cell.box, w * h, (x + w / 2, y + h / 2))
    fine = cell_crop(field.image, found, 0.25, geometry)
    half = cv2.resize(field.image, (240, 240), interpolation=cv2.INTER_AREA)
    coarse = cell_crop(half, FoundCell(found.box, found.area, (found.centre[0] / 2, found.centre[1] / 2)), 0.5, geometry)
    assert fine.shape == coarse.shape == (48, 48, 3)
    assert np.abs(fine.astype(int) - coarse.astype(int)).mean() < 6
    # a cell at the field's edge: the square is filled by reflection, never shifted or shrunk
    edge = cell_crop(field.image, FoundCell((0, 0, 10, 10), 100, (2.0, 2.0)), 0.25, geometry)
    assert edge.shape == (48, 48, 3)
    with pytest.raises(ValueError, match="pixel size"):
        cell_crop(field.image, found, 0.0, geometry)


def _stained_disks(side: int, radii: list[int]) -> np.ndarray:
    """A pale field of `side` pixels with purple disks of these radii along its diagonal."""
    rgb = np.full((side, side, 3), (235, 200, 205), np.uint8)
    for index, radius in enumerate(radii):
        centre = (60 + 120 * index, 60 + 120 * index)
        cv2.circle(rgb, centre, radius, (110, 40, 150), -1)
    return rgb


def test_nucleus_limits_are_physical_once_the_pixel_size_is_known():
    """At 0.3 um/px a nucleus of radius 20 px is 113 um^2 and a speck of radius 6 px is 10 um^2 (a platelet); in
    a 3000-px frame of that camera the nucleus is under 0.08% of the area, which only the share-of-area limits
    (no pixel size) refuse."""
    small = _stained_disks(320, [20, 6])
    assert len(find_cells(small)) == 2  # no pixel size: shares of the area, and the speck is kept
    assert [c.area * 0.09 for c in find_cells(small, um_per_px=0.3)] == [pytest.approx(113, rel=0.1)]
    large = _stained_disks(3000, [20, 6])
    assert find_cells(large) == []
    assert len(find_cells(large, um_per_px=0.3)) == 1
    assert len(analyse_field(large, scale=ScaleConfig(um_per_px=0.3)).cells) == 1
    with pytest.raises(ValueError, match="max_nucleus_um2"):
        CellFinderConfig(min_nucleus_um2=50, max_nucleus_um2=10)


def test_the_configured_scale_wins_over_the_estimate():
    field = synthetic_field(3).image
    estimated = analyse_field(field, scale=ScaleConfig())
    assert estimated.scale.source.startswith("estimated") and estimated.scale.um_per_px == pytest.approx(
        estimate_scale(field).microns_per_pixel)
    configured = analyse_field(field, scale=ScaleConfig(um_per_px=0.3))
    assert (configured.scale.um_per_px, configured.scale.source) == (0.3, "configured")
    assert analyse_field(field).scale.source == "not measured"  # field models: no scale needed


def test_a_cell_bundle_needs_its_crop_geometry(bundle):
    values = json.loads((bundle / "manifest.json").read_text())
    values.pop("manifest_sha256")
    values.pop("field_px", None)   # a field bundle's tile side: a cell bundle has none
    with pytest.raises(ValueError, match="needs the cell crop geometry"):
        Manifest.model_validate(values | {"input_kind": "cell"})
    with pytest.raises(ValueError, match="has no `cell` crop geometry"):
        Manifest.model_validate(values | {"cell": CellGeometry().model_dump()})
    assert Manifest.model_validate(values | {"input_kind": "cell", "cell": CellGeometry().model_dump()}).cell


@pytest.fixture(scope="session")
def cell_set(tmp_path_factory):
    """A cell set cut from generated fields (all-aria names; Early fields blast-like, Benign normal-looking)
    and generated single normal cells."""
    from leukoscreen.training.cell_data import build_cell_data
    root = tmp_path_factory.mktemp("cells")
    for number in range(1, 25):
        blast = number % 2 == 0
        name = f"WBC-{'Malignant-Early' if blast else 'Benign'}-{20 * number:03d}.png"  # one smear block each
        field = synthetic_field(number, size=320, white_cells=3, blast_fraction=1.0 if blast else 0.0)
        write_rgb(root / "fields" / ("Early" if blast else "Benign") / name, field.image)
    for number in range(8):
        field = synthetic_field(100 + number, size=320, white_cells=1, blast_fraction=0.0)
        x, y, w, h = field.cells[0].box
        cx, cy = x + w // 2, y + h // 2
        write_rgb(root / "normal" / "lymphocyte" / f"n{number}.png",
                  field.image[max(0, cy - 60):cy + 60, max(0, cx - 60):cx + 60])
    summary = build_cell_data(root / "fields", [root / "normal"], root / "set")
    return root / "set", summary


def test_the_shortcut_probes_read_cell_crops_at_their_own_size(cell_set, tmp_path):
    from leukoscreen.training.shortcuts import shortcut_probes
    folder, _ = cell_set
    result = shortcut_probes(folder, tmp_path / "probes", block_size=2, n_boot=10,
                             probes=["sharpness", "stained_area", "patch_centre"])
    assert result["task"] == "cells" and set(result["probes"]) == {"sharpness", "stained_area", "patch_centre"}
    assert result["probes"]["patch_centre"]["features"] == 32 * 32 * 3
    assert result["probes"]["sharpness"]["features"] == 3 and result["probes"]["stained_area"]["features"] == 3


def test_the_cell_set_inherits_labels_and_groups_from_its_fields(cell_set):
    folder, summary = cell_set
    rows = list(csv.DictReader(open(folder / "cells.csv")))
    assert summary["labels"]["blast"] > 0 and summary["labels"]["non-blast"] > 0
    for row in rows:
        assert (folder / row["file"]).is_file() and cv2.imread(str(folder / row["file"])).shape == (64, 64, 3)
        if row["source"] == "fields":
            assert row["label"] == ("blast" if row["class"] == "Early" else "non-blast")
            assert row["group"].startswith("fields:aria-")   # the field's smear block: never across a split
        else:
            assert row["label"] == "non-blast" and row["group"].startswith("normal:file-")
    sources = summary["sources"]
    # every source cut at its own pixel size, all brought to the coarsest one's resolution
    assert summary["geometry"]["effective_um_per_px"] == max(s["um_per_px"] for s in sources.values())
    dataset = open_dataset(folder)
    assert dataset.kind == "cells" and dataset.classes == ["non-blast", "blast"] and dataset.tasks == ["cells"]
    with pytest.raises(ValueError, match="already holds a cell set"):
        from leukoscreen.training.cell_data import build_cell_data
        build_cell_data(None, [folder.parent / "normal"], folder)


@pytest.fixture(scope="session")
def cell_bundle(cell_set, tmp_path_factory):
    from leukoscreen.convert.bundle_builder import convert_run
    from leukoscreen.training.runs import TrainConfig
    from leukoscreen.training.train import train
    folder, _ = cell_set
    root = tmp_path_factory.mktemp("cell-bundle")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEUKOSCREEN_CACHE", str(root / "cache"))
        train(TrainConfig.with_defaults(str(folder), colour="standardize", epochs=2, batch_size=8, block_size=2),
              root / "run", n_boot=10)
        convert_run(root / "run", root / "bundle", ["tflite-int8", "onnx-int8"], representative=20, allow_drop=True)
    return root / "bundle"


def test_training_on_cells_reports_how_noisy_the_weak_labels_look(cell_bundle):
    metrics = json.loads((cell_bundle.parent / "run" / "metrics.json").read_text())
    groups = metrics["weak_labels"]
    assert set(groups) <= {"fields Benign", "fields Early", "normal normal"} and groups
    for row in groups.values():
        assert row["crops"] > 0 and 0 <= row["confidently_contradicted"] <= 1 and 0 <= row["called_blast"] <= 1


def test_a_cell_bundle_records_how_its_crops_are_cut(cell_set, cell_bundle):
    _, summary = cell_set
    manifest = json.loads((cell_bundle / "manifest.json").read_text())
    assert manifest["input_kind"] == "cell" and manifest["class_names"] == ["non-blast", "blast"]
    assert manifest["cell"] == summary["geometry"] and manifest["input"]["size"] == 64
    assert manifest["um_per_px"] == summary["sources"]["fields"]["um_per_px"]
    assert manifest["preprocess"]["resize"] == 0 and manifest["preprocess"]["mask_corner"] == 0.0
    assert manifest["decision"]["negative_classes"] == ["non-blast"]
    # the threshold is chosen on fields scored by their most blast-like cell, as the device decides them
    assert manifest["decision"]["chosen_on"] == "validation fields, each scored by its most blast-like cell"
    split = list(csv.DictReader(open(cell_bundle / "split.csv")))
    test_fields = {row["path"].split("/")[-1].rsplit("-c", 1)[0] for row in split if row["part"] == "test"}
    outcomes = manifest["metrics"][manifest["default_format"]]["screening"]
    assert outcomes["blast"]["n"] + outcomes["non_blast"]["n"] == len(test_fields)


def test_the_device_decides_a_field_from_its_cells(cell_bundle):
    model = ScreeningModel.open(cell_bundle)
    field = synthetic_field(1)
    record = screen(field.image, model)
    assert record.decision in ("no_blasts", "indeterminate", "possible_blasts", "unfamiliar")
    assert record.scale_source.startswith("estimated") and record.um_per_px > 0
    assert len(record.cells) == record.cells_found >= 1
    assert all(cell.predicted in ("non-blast", "blast") for cell in record.cells)
    assert model.guard is not None and record.guard_score is not None   # convert gives every bundle a guard
    familiar = [cell for cell in record.cells if not cell.unfamiliar]   # the guard's: unlike the training cells
    assert sum(record.counts.values()) == len(familiar)
    if familiar:
        assert record.blast_fraction == record.counts["blast"] / len(familiar)
    if familiar and record.decision != "unfamiliar":   # not screened: no blast score shown
        assert record.blast_score == max(cell.blast_score for cell in familiar)
    # a cell the model cannot read might be the blast: never "No blasts suggested" past one
    assert not (record.decision == "no_blasts" and len(familiar) < len(record.cells))
    configured = screen(field.image, model, scale=ScaleConfig(um_per_px=0.25))
    assert (configured.um_per_px, configured.scale_source) == (0.25, "configured")


def test_a_cell_model_reads_only_the_cells_it_knows(cell_bundle):
    """With a threshold no cell passes, no answer; with one every cell passes, the model's own answer."""
    model = ScreeningModel.open(cell_bundle)
    image = synthetic_field(1).image
    model.guard = model.guard.model_copy(update={"threshold": -1e30})
    refused = screen(image, model)
    assert refused.decision == "unfamiliar" and refused.cells and all(c.unfamiliar for c in refused.cells)
    assert sum(refused.counts.values()) == 0 and refused.blast_fraction is None
    model.guard = model.guard.model_copy(update={"threshold": 1e30})
    read = screen(image, model)
    assert read.decision in ("no_blasts", "indeterminate", "possible_blasts")
    assert not any(c.unfamiliar for c in read.cells) and sum(read.counts.values()) == len(read.cells)


def test_no_white_cell_no_decision_whatever_the_model(cell_bundle):
    """Every stained nucleus painted over: the cell model is never asked, the field is not screened."""
    field = synthetic_field(4)
    image = field.image.copy()
    for cell in field.cells:
        x, y, w, h = cell.box
        image[y:y + h, x:x + w] = image[0, 0]
    record = screen(image, ScreeningModel.open(cell_bundle))
    assert record.decision == "retake" and record.blast_score is None and not record.counts


def test_robustness_of_a_cell_bundle_counts_only_fields_it_never_saw(cell_set, cell_bundle):
    """The cell bundle's split lists crops: a field is counted only when every cell of it is in the test part,
    and a single-cell source it learnt from only by its test images."""
    from leukoscreen.training.robustness import robustness, source_items
    from leukoscreen.training.splits import load_split
    folder, _ = cell_set
    split = load_split(cell_bundle / "split.csv")
    rows = list(csv.DictReader(open(folder / "cells.csv")))
    part_of = {row.path: row.part for row in split}
    test_fields = {r["field"].split("/")[-1].rsplit(".", 1)[0] for r in rows
                   if r["source"] == "fields" and part_of[r["file"]] == "test"}
    trained = {r["field"].split("/")[-1].rsplit(".", 1)[0] for r in rows
               if r["source"] == "fields" and part_of[r["file"]] != "test"}
    assert test_fields and trained and not test_fields & trained
    _, items = source_items(folder.parent / "fields", cell_bundle / "split.csv", cell_bundle=True)
    assert {Path(item.path).stem for item in items} == test_fields
    _, normal = source_items(folder.parent / "normal", cell_bundle / "split.csv", cell_bundle=True)
    assert {Path(i.path).stem for i in normal} == {r["field"].split("/")[-1].rsplit(".", 1)[0] for r in rows
                                                   if r["source"] == "normal" and part_of[r["file"]] == "test"}
    result = robustness(cell_bundle, [folder.parent / "fields"], perturbations=["cells removed"])
    assert [row["n"] for row in result["rows"]] == [len(test_fields)] * 2


def test_a_field_scores_as_its_most_blast_like_cell():
    from leukoscreen.training.metrics import field_maxima
    scores, blast = field_maxima(np.array([0.1, 0.9, 0.2, 0.3]), np.array([True, True, False, False]),
                                 ["a", "a", "b", "b"])
    assert scores.tolist() == [0.9, 0.3] and blast.tolist() == [True, False]


def test_a_gate_that_lets_fields_without_cells_through_still_gets_no_answer(cell_bundle):
    from leukoscreen.edge.quality import QualityConfig
    blank = np.full((200, 200, 3), 225, np.uint8)
    blank[::9, :] = (200, 160, 180)   # a pattern of unstained lines: sharp enough, no white cell
    record = screen(blank, ScreeningModel.open(cell_bundle),
                    quality=QualityConfig(min_cells=0, min_stain_fraction=0.0, min_focus=0.0))
    assert record.decision == "retake" and record.quality.reasons == ("no white cells found (move to another field)",)


def test_a_cells_csv_with_unknown_labels_or_paths_outside_is_refused(tmp_path):
    from leukoscreen.training.datasets import DataError
    for label, file in (("maybe", "blast/a.png"), ("blast", "../../etc/passwd")):
        (tmp_path / "cells.csv").write_text(f"file,label,group\nnon-blast/b.png,non-blast,g1\n{file},{label},g2\n")
        with pytest.raises(DataError, match="line 3"):
            open_dataset(tmp_path)


def test_fields_without_all_aria_names_are_refused_not_all_labelled_blast(tmp_path):
    from leukoscreen.training.cell_data import build_cell_data
    for cls in ("benign", "malignant"):
        for number in range(3):
            write_rgb(tmp_path / "fields" / cls / f"f{number}.png", synthetic_field(number, size=224).image)
    with pytest.raises(ValueError, match="named as all-aria's"):
        build_cell_data(tmp_path / "fields", [], tmp_path / "out")
