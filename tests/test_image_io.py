import cv2
import numpy as np
import pytest

from leukoscreen.edge.image_io import ImageReadError, decode_image, read_image

from conftest import png_bomb

RGB = np.dstack([np.full((20, 30), v, np.uint8) for v in (200, 100, 50)])


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".jpg"])
def test_reads_formats_as_rgb(tmp_path, suffix):
    path = tmp_path / f"image{suffix}"
    cv2.imwrite(str(path), cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    image = read_image(path)
    assert image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - RGB).max() <= 3  # JPEG is lossy; channel order must be RGB


def test_grayscale_rgba_and_16_bit_become_8_bit_rgb(tmp_path):
    gray = np.full((10, 10), 77, np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    rgba = np.dstack([cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR), np.full((20, 30), 9, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    cv2.imwrite(str(tmp_path / "deep.png"), np.full((8, 8, 3), 40000, np.uint16))
    assert (read_image(tmp_path / "gray.png") == 77).all()
    assert (read_image(tmp_path / "rgba.png") == RGB).all()
    deep = read_image(tmp_path / "deep.png")
    assert deep.dtype == np.uint8 and (deep == 40000 >> 8).all()


def test_truncated_jpeg_names_file_and_problem(tmp_path):
    ok, encoded = cv2.imencode(".jpg", RGB)
    path = tmp_path / "cut.jpg"
    path.write_bytes(encoded.tobytes()[: len(encoded) // 2])
    with pytest.raises(ImageReadError, match="cut.jpg.*truncated"):
        read_image(path)


@pytest.mark.parametrize("data, message", [(b"", "empty"), (b"not an image at all", "not a readable image")])
def test_bad_bytes_give_clear_errors(data, message):
    with pytest.raises(ImageReadError, match=message):
        decode_image(data, "upload.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageReadError, match="pixel limit"):
        decode_image(png_bomb(20_000, 20_000), "bomb.png")  # 400 million pixels in a few hundred bytes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing was allocated


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="cannot be read"):
        read_image(tmp_path / "nope.png")
