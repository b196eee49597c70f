"""The red-cell scale estimate and the whole-pipeline robustness command."""
import json
import re
import shutil

import cv2
import numpy as np
import pytest

from conftest import write_rgb
from leukoscreen.edge.cell_finder import stain_mask
from leukoscreen.edge.scale import RED_CELL_DIAMETER_UM, estimate_scale

BACKGROUND, RED_CELL, NUCLEUS = (236, 226, 230), (214, 150, 160), (110, 55, 150)


def red_cell_field(diameter: int, spacing: float, size: int = 400, seed: int = 0) -> np.ndarray:
    """Red cells of one diameter on a grid (spacing in diameters; below 1 they touch and overlap), with their
    pale centres, one purple white cell and pixel noise."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), BACKGROUND, np.uint8)
    step = max(1, int(diameter * spacing))
    for y in range(diameter, size - diameter, step):
        for x in range(diameter, size - diameter, step):
            jitter = rng.integers(-2, 3, 2)
            centre = (int(x + jitter[0]), int(y + jitter[1]))
            cv2.circle(image, centre, diameter // 2, RED_CELL, -1)
            cv2.circle(image, centre, diameter // 8, (224, 180, 188), -1)
    cv2.circle(image, (size // 2, size // 2), diameter, NUCLEUS, -1)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("diameter", [16, 30, 60])
def test_the_scale_comes_from_the_red_cells_diameter(diameter):
    estimate = estimate_scale(red_cell_field(diameter, spacing=1.6, size=max(400, 12 * diameter)))
    assert estimate is not None and estimate.method == "round cells" and estimate.cells >= 3
    assert estimate.diameter_px == pytest.approx(diameter, rel=0.1)
    assert estimate.microns_per_pixel == pytest.approx(RED_CELL_DIAMETER_UM / diameter, rel=0.1)


def test_crowded_touching_cells_fall_back_to_granulometry_and_keep_the_ratio():
    small = estimate_scale(red_cell_field(20, spacing=0.85, size=400))
    large = estimate_scale(red_cell_field(40, spacing=0.85, size=600))
    assert small.method == large.method == "granulometry"
    assert large.diameter_px / small.diameter_px == pytest.approx(2, rel=0.25)


def test_a_field_without_red_cells_has_no_scale():
    assert estimate_scale(np.full((300, 300, 3), BACKGROUND, np.uint8)) is None


def test_real_sources_differ_in_scale_as_their_magnification(shared_data):
    """all-aria fields against PBC's single-cell images (a higher magnification): the red cells say so."""
    def median_scale(folder, count=12):
        files = sorted(folder.rglob("*.jp*g"))[:: max(1, len(sorted(folder.rglob("*.jp*g"))) // count)][:count]
        from leukoscreen.edge.image_io import read_image
        values = [e.microns_per_pixel for e in (estimate_scale(read_image(f)) for f in files) if e]
        assert len(values) >= count // 2, f"too few images of {folder} gave a scale"
        return float(np.median(values))
    aria, pbc = median_scale(shared_data / "all-aria"), median_scale(shared_data / "pbc-subset")
    assert 0.4 < aria < 0.65          # measured on all 2767 fields: 0.474 um/px
    assert aria / pbc > 2.5           # PBC's cells are several times larger in pixels


def test_scale_command_prints_the_median(tmp_path, capsys):
    from leukoscreen.cli import main
    for index in range(3):
        write_rgb(tmp_path / "fields" / f"f{index}.png", red_cell_field(24, spacing=1.6, seed=index))
    main(["scale", str(tmp_path / "fields"), "--json"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == 3 and printed["estimated"] == 3
    assert printed["microns_per_pixel"] == pytest.approx(RED_CELL_DIAMETER_UM / 24, rel=0.1)


def test_cells_removed_leaves_no_stained_pixel():
    from leukoscreen.training.robustness import PERTURBATIONS
    field = red_cell_field(24, spacing=1.6)
    assert stain_mask(field).sum() > 0
    assert stain_mask(PERTURBATIONS["cells removed"](field)).sum() == 0


def test_robustness_runs_the_whole_pipeline_per_source_and_perturbation(bundle, aria_like, tmp_path):
    from leukoscreen.training.robustness import ANSWERS, robustness
    other = tmp_path / "other-lab"
    for index in range(4):
        write_rgb(other / "neutrophil" / f"n{index}.png", red_cell_field(24, spacing=1.6, seed=index))
    write_rgb(other / "platelet" / "p0.png", np.full((96, 96, 3), BACKGROUND, np.uint8))
    out = tmp_path / "report"
    result = robustness(bundle, [aria_like, other], out, ["jpeg q30", "cells removed"], limit=10)
    rows = {(row["source"], row["perturbation"]): row for row in result["rows"]}
    assert set(rows) == {("aria", "as acquired"), ("aria", "jpeg q30"), ("aria", "cells removed"),
                         ("other-lab", "as acquired")}
    for row in rows.values():
        assert sum(row[a] for a in ANSWERS) == pytest.approx(1)
    assert rows[("aria", "as acquired")]["n"] == 10
    assert rows[("aria", "jpeg q30")]["not_screened"] == 1  # the gate sees the JPEG blocks: retakes, not answers
    assert rows[("aria", "jpeg q30")]["not screened, main reason"] == "compressed image (10)"
    assert rows[("other-lab", "as acquired")]["n"] == 5 and rows[("other-lab", "as acquired")]["sensitivity"] is None
    assert "whole device pipeline" in result["measures"] and "Research use only" in result["notice"]
    saved = json.loads((out / "robustness.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert "| aria | cells removed |" in (out / "robustness.md").read_text()
    from leukoscreen.training.report import write_report
    page = write_report([bundle.parent / "run"], tmp_path / "rep", robustness_dirs=[out], gradcam=False).read_text()
    assert "## Robustness of" in page and "| other-lab | as acquired | 5 |" in page
    with pytest.raises(ValueError, match="unknown perturbation"):
        robustness(bundle, [aria_like], None, ["sepia"])


def test_classify_um_per_px_is_checked_and_said_to_be_unused_by_field_models(tmp_path, capsys):
    from leukoscreen.cli import main
    from leukoscreen.edge.synthetic_smear import synthetic_field
    field = tmp_path / "field.png"
    write_rgb(field, synthetic_field(1).image)
    assert main(["classify", "--um-per-px", "25", str(field)]) == 2
    assert "--um-per-px 25: give the camera's microns per pixel" in capsys.readouterr().err
    assert main(["classify", "--um-per-px", "0.47", str(field)]) == 0   # the default records its training scale
    captured = capsys.readouterr()
    assert "records no training scale" not in captured.err
    assert re.search(r"\d+ cells? found", captured.out) and " 1 cells " not in captured.out
    from conftest import write_manifest_values
    from leukoscreen.edge.screening import DEFAULT_BUNDLE
    unscaled = tmp_path / "unscaled"
    shutil.copytree(DEFAULT_BUNDLE, unscaled)
    values = json.loads((unscaled / "manifest.json").read_text())
    values.pop("field_px")
    write_manifest_values(unscaled, values)
    assert main(["classify", "--bundle", str(unscaled), "--um-per-px", "0.47", str(field)]) == 0
    assert "records no training scale" in capsys.readouterr().err
