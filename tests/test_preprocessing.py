import json

import numpy as np
import pytest

from leukoscreen.edge.preprocessing import (SCALE_BAR_CORNER, STANDARD_MEAN, STANDARD_STD, PreprocessConfig,
                                            preprocess)

from conftest import smear_image


def test_default_steps_give_model_input():
    image = smear_image(np.random.default_rng(1), blast=True, size=224)
    out = preprocess(image)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8


def test_each_step_can_be_turned_off():
    image = smear_image(np.random.default_rng(2), blast=False, size=64)
    plain = preprocess(image, PreprocessConfig(resize=0, median=0, sharpen=False, input_size=64))
    assert (plain == image).all()
    filtered = preprocess(image, PreprocessConfig(resize=0, median=3, sharpen=False, input_size=64))
    assert not (filtered == image).all()


def test_corner_mask_fills_bottom_right_only():
    image = smear_image(np.random.default_rng(3), blast=False, size=224)
    image[-30:, -30:] = 0  # a dark "label"
    config = PreprocessConfig(resize=0, median=0, sharpen=False, input_size=224, mask_corner=SCALE_BAR_CORNER)
    out = preprocess(image, config)
    side = round(SCALE_BAR_CORNER * 224)
    corner = out[-side:, -side:].reshape(-1, 3)
    assert (corner == corner[0]).all() and corner[0].min() > 100  # one background-like colour
    assert (out[:-side] == image[:-side]).all()


def test_colour_standardisation_removes_colour_cast():
    image = smear_image(np.random.default_rng(4), blast=True, size=128)
    tinted = np.clip(image.astype(int) + (30, -20, 10), 0, 255).astype(np.uint8)
    config = PreprocessConfig(resize=0, median=0, sharpen=False, input_size=128, colour="standardize")
    a, b = preprocess(image, config), preprocess(tinted, config)
    assert np.allclose(a.reshape(-1, 3).mean(axis=0), STANDARD_MEAN, atol=2)
    assert np.allclose(a.reshape(-1, 3).std(axis=0), STANDARD_STD, atol=2)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2


def test_grayscale_has_three_equal_channels():
    out = preprocess(smear_image(np.random.default_rng(5), True), PreprocessConfig(colour="grayscale"))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


@pytest.mark.parametrize("values, key", [({"colour": "sepia"}, "colour"), ({"median": 4}, "median"),
                                         ({"mask_corner": 0.7}, "mask_corner")])
def test_bad_config_names_key(values, key):
    with pytest.raises(ValueError, match=key):
        PreprocessConfig(**values)
    with pytest.raises(ValueError, match="unknown"):
        PreprocessConfig.from_dict({"sharpness": 2})


def test_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        preprocess(np.zeros((10, 10), np.uint8))


def test_reinhard_moves_each_image_to_the_reference_and_needs_one():
    from leukoscreen.edge.preprocessing import lab_statistics, reinhard
    rng = np.random.default_rng(0)
    field = rng.integers(60, 200, (64, 64, 3), dtype=np.uint8)
    reference = (150.0, 140.0, 120.0, 30.0, 8.0, 6.0)
    for cast in ((40, 0, 0), (0, 0, 50)):  # the same field under two stain/lamp colour casts
        tinted = np.clip(field.astype(int) + cast, 0, 255).astype(np.uint8)
        assert np.allclose(lab_statistics(reinhard(tinted, reference)), reference, atol=1.5)
    config = PreprocessConfig(colour="reinhard", reference=list(reference))
    assert config.reference == reference and PreprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="needs its reference"):
        preprocess(field, PreprocessConfig(colour="reinhard"))
    with pytest.raises(ValueError, match="6"):
        PreprocessConfig(colour="reinhard", reference=(1.0, 2.0))


def test_training_with_reinhard_keeps_the_reference_in_the_run_and_bundle(aria_like, tmp_path):
    from leukoscreen.cli import main
    from leukoscreen.convert.bundle_builder import convert_run
    run = tmp_path / "run"
    assert main(["train", "--data", str(aria_like), "--colour", "reinhard", "--epochs", "1", "--batch-size", "8",
                 "--block-size", "3", "--bootstrap", "10", "--out", str(run)]) == 0
    reference = json.loads((run / "config.json").read_text())["train"]["preprocess"]["reference"]
    assert len(reference) == 6 and 0 < reference[0] < 255
    convert_run(run, tmp_path / "bundle", ["tflite-int8"], representative=10, allow_drop=True)
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["preprocess"]["colour"] == "reinhard" and manifest["preprocess"]["reference"] == reference


def test_a_non_square_frame_is_cropped_to_its_centre_not_squashed():
    """A 4:3 camera frame: the model sees its central square at the same scale (a round cell stays round)."""
    import cv2

    from leukoscreen.edge.preprocessing import central_square
    wide = np.full((300, 400, 3), 230, np.uint8)
    cv2.circle(wide, (200, 150), 60, (120, 60, 150), -1)
    config = PreprocessConfig(median=0, sharpen=False, input_size=128)
    out = preprocess(wide, config)
    assert central_square(wide).shape == (300, 300, 3)
    assert np.array_equal(out, preprocess(central_square(wide), config))
    ys, xs = np.nonzero(out[..., 1] < 100)  # the circle's pixels
    assert abs((xs.max() - xs.min()) - (ys.max() - ys.min())) <= 1  # as wide as high
    squashed = cv2.resize(wide, (128, 128), interpolation=cv2.INTER_AREA)
    ys, xs = np.nonzero(squashed[..., 1] < 100)
    assert (ys.max() - ys.min()) - (xs.max() - xs.min()) > 10  # what resizing the whole frame would do
