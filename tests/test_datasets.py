import numpy as np
import pytest

from leukoscreen.training.datasets import DataError, open_dataset

from conftest import write_rgb

IMAGE = np.full((16, 16, 3), 128, np.uint8)


def test_aria_names_give_subtypes_binary_view_and_blocks(tmp_path):
    for name in ("WBC-Benign-001.jpg", "WBC-Benign-021.jpg", "WBC-Malignant-Pre-005.jpg",
                 "WBC-Malignant-Pro-040.jpg"):
        write_rgb(tmp_path / "x" / name, IMAGE)
    data = open_dataset(tmp_path, block_size=20)
    assert data.kind == "aria" and data.tasks == ["subtype", "binary"]
    assert [s.cls for s in data.samples] == ["Benign", "Benign", "Pre", "Pro"]
    assert data.samples[0].group != data.samples[1].group  # numbers 1 and 21 are different blocks
    names, labels = data.labels_for("binary")
    assert names == ["benign", "malignant"] and labels == [0, 0, 1, 1]


def test_cnmc_names_group_by_patient_in_any_case(tmp_path):
    for name in ("UID_1_3_1_all.bmp", "UID_1_9_2_all.bmp", "UID_H6_14_1_hem.bmp", "UID_h6_5_1_hem.bmp"):
        write_rgb(tmp_path / name, IMAGE)
    data = open_dataset(tmp_path)
    assert data.kind == "cnmc"
    assert [s.group for s in data.samples] == ["cnmc-1", "cnmc-1", "cnmc-H6", "cnmc-H6"]
    assert data.labels_for("binary") == (["hem", "all"], [1, 1, 0, 0])


def test_class_folders_with_png_and_tiff(tmp_path):
    write_rgb(tmp_path / "neutrophil" / "a.png", IMAGE)
    write_rgb(tmp_path / "lymphocyte" / "b.tif", IMAGE)
    write_rgb(tmp_path / "monocyte" / "c.JPG", IMAGE)
    data = open_dataset(tmp_path)
    assert data.kind == "folders" and data.classes == ["lymphocyte", "monocyte", "neutrophil"]
    with pytest.raises(DataError, match="task 'binary' is not defined"):
        data.labels_for("binary")


def test_real_folders_are_read(shared_data):
    aria = open_dataset(shared_data / "all-aria")
    assert aria.kind == "aria" and len(aria.samples) == 2767
    assert open_dataset(shared_data / "cnmc-samples").kind == "cnmc"
    assert len(open_dataset(shared_data / "pbc-subset").classes) == 8


def test_bad_folders_say_what_is_wrong(tmp_path, capsys):
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        open_dataset(tmp_path / "empty")
    write_rgb(tmp_path / "one" / "only" / "a.png", IMAGE)
    (tmp_path / "one" / "nothing").mkdir()
    with pytest.raises(DataError, match="at least two classes"):
        open_dataset(tmp_path / "one")
    assert "class folders with no images are ignored: nothing" in capsys.readouterr().out
    with pytest.raises(DataError, match="kind 'xyz' is unknown"):
        open_dataset(tmp_path / "one", kind="xyz")
