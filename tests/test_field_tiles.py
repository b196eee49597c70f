"""Field models on a calibrated camera: the frame resampled to the model's training scale, aspect ratio kept, and
read in tiles of the model's field (the most blast-like decides), instead of squashed into one input."""
import json
import shutil

import numpy as np
import pytest

from leukoscreen.cli import main
from leukoscreen.edge.bundle import load_bundle
from leukoscreen.edge.field_tiles import MAX_TILES, model_tiles
from leukoscreen.edge.scale import ScaleConfig
from leukoscreen.edge.screening import ScreeningModel, screen

from conftest import smear_image, write_manifest_values


def test_a_frame_is_resampled_to_the_model_scale_and_cut_into_tiles_of_its_field():
    frame = np.zeros((400, 600, 3), np.uint8)
    frame[:, 300:] = 255
    tiles = model_tiles(frame, um_per_px=0.25, model_um_per_px=0.5, field_px=100)   # -> 200 x 300: 2 x 3 tiles
    assert len(tiles) == 6 and all(t.shape == (100, 100, 3) for t in tiles)
    assert tiles[0].mean() == 0 and tiles[2].mean() == 255            # the left and right thirds, not squashed
    assert len(model_tiles(frame, 0.5, 0.5, 100)) == 24                 # 4 x 6: every part of the frame is read
    overlapping = model_tiles(frame, 0.5, 0.5, 160)                     # 400 x 600 in 3 x 4 overlapping tiles
    assert len(overlapping) == 12 and all(t.shape == (160, 160, 3) for t in overlapping)
    small = frame[:150, :150]
    assert [t.shape for t in model_tiles(small, 0.25, 0.5, 100)] == [(75, 75, 3)]   # one tile of its own side
    strip = frame[:90, :]                            # narrower than one field: tiles of its short side, end to end
    tiles = model_tiles(strip, 0.5, 0.5, 100)
    assert len(tiles) == 7 and all(t.shape == (90, 90, 3) for t in tiles) and tiles[-1].mean() == 255
    with pytest.raises(ValueError, match=f"at most {MAX_TILES}"):     # no frame is read only in part
        model_tiles(np.zeros((3000, 4000, 3), np.uint8), 2.0, 0.5, 100)
    with pytest.raises(ValueError, match="too small to read"):
        model_tiles(frame, 0.02, 0.5, 100)


def test_an_implausible_pixel_size_is_refused_and_focus_is_measured_on_a_crop():
    from leukoscreen.edge.quality import QualityConfig, focus_at_scale
    with pytest.raises(ValueError, match="not a blood-smear camera's"):
        ScaleConfig(um_per_px=0.001)
    with pytest.raises(ValueError, match="not a blood-smear camera's"):
        QualityConfig(focus_um_per_px=0.001)
    gray = np.random.default_rng(0).integers(0, 255, (3000, 4000), np.uint8)
    focus, at = focus_at_scale(gray, 5.0, QualityConfig())   # 10.5x: resampled from a central crop, not 1.3 Gpx
    assert focus > 0 and at == QualityConfig().focus_um_per_px


def _scaled_bundle(bundle, tmp_path, field_px=96):
    copy = tmp_path / "scaled"
    shutil.copytree(bundle, copy)
    values = json.loads((copy / "manifest.json").read_text())
    values.pop("manifest_sha256")
    write_manifest_values(copy, values | {"um_per_px": 0.5, "field_px": field_px})
    return copy


def test_the_device_reads_a_calibrated_frame_in_tiles_and_the_most_blast_like_decides(bundle, tmp_path):
    from leukoscreen.edge.field_analysis import analyse_field
    from leukoscreen.edge.quality import QualityConfig
    model = ScreeningModel.open(_scaled_bundle(bundle, tmp_path))
    rng = np.random.default_rng(2)
    fields = [smear_image(rng, blast) for blast in (False, False, False, True)]
    frame = np.concatenate([np.concatenate(fields[:2], axis=1), np.concatenate(fields[2:], axis=1)])   # 192 x 192
    open_gate = QualityConfig(min_focus=0.0, max_blockiness=0.0, max_noise=0.0)
    record = screen(frame, model, quality=open_gate, scale=ScaleConfig(um_per_px=0.5))
    assert record.tiles == 4 and record.um_per_px == 0.5 and record.scale_source == "configured"
    answers = [model.classify(f, analyse_field(f)) for f in fields]
    familiar = [a for a in answers if a.decision != "unfamiliar"]
    if familiar and record.decision != "unfamiliar":
        assert record.blast_score == max(a.blast_score for a in familiar)
    assert (record.decision == "unfamiliar") == (not familiar or (
        len(familiar) < 4 and max(a.blast_score for a in familiar) < model.bundle.manifest.decision.threshold))
    # without a configured pixel size the frame is read whole, as before
    whole = screen(frame, model, quality=open_gate)
    assert whole.tiles is None and whole.blast_score in (None, model.classify(frame, analyse_field(frame)).blast_score)


def test_bundle_scale_records_the_training_scale_of_a_field_bundle(bundle, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    code = main(["bundle", "scale", str(copy), "--data", str(bundle.parent / "data"), "--bundle-version", "s1"])
    manifest = load_bundle(copy).manifest
    if code == 0:   # generated smears: 96 px, red cells drawn 10-16 px across
        assert manifest.field_px == 96 and 0.3 < manifest.um_per_px < 1.5 and manifest.version == "s1"
    else:
        assert "too few red cells" in capsys.readouterr().err and manifest.field_px is None
    assert main(["bundle", "scale", str(copy), "--data", str(tmp_path / "nowhere")]) == 2
    capsys.readouterr()
    other = tmp_path / "other-data"                  # the same names, other pixels: not the data it was trained on
    shutil.copytree(bundle.parent / "data", other)
    trained_on = next(line.split(",")[0] for line in (copy / "split.csv").read_text().splitlines()
                      if line.endswith(",train"))
    (other / trained_on).write_bytes((other / trained_on).read_bytes() + b"\0")
    assert main(["bundle", "scale", str(copy), "--data", str(other)]) == 2
    assert f"differ from it (first: {trained_on})" in capsys.readouterr().err
