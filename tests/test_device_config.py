import pytest

from leukoscreen.edge.device_config import ConfigError, load_config, parse_config


def test_defaults_are_a_safe_development_device():
    config = load_config(None)
    assert config.camera.kind == "synthetic" and config.display.kind == "emulated"
    assert config.host == "127.0.0.1" and config.button.kind == "none"


def test_toml_file_is_read_and_typed(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('state_dir = "/tmp/x"\n[camera]\nkind = "opencv"\ndevice = "/dev/video0"\n'
                    '[button]\nkind = "gpiozero"\npin = 27\n[quality]\nmin_focus = 25\n'
                    '[cell_finder]\nhsv_lower = [120, 70, 0]\n')
    config = load_config(path)
    assert config.camera.device == "/dev/video0" and config.button.pin == 27
    assert config.quality.min_focus == 25.0 and config.cell_finder.hsv_lower == (120, 70, 0)


@pytest.mark.parametrize("values, message", [
    ({"camera": {"kind": "webcam"}}, "camera.kind = 'webcam'"),
    ({"camera": {"zoom": 2}}, "unknown key 'camera.zoom'"),
    ({"button": {"pin": "seventeen"}}, "button.pin = 'seventeen': expected a whole number"),
    ({"host": "0.0.0.0"}, "set access_token"),
    ({"display": {"cols": 40}}, "use 16x2 or 20x4"),
    ({"camera": {"kind": "folder", "folder": "/nonexistent"}}, "camera.folder"),
    ({"cell_finder": {"hsv_lower": [300, 0, 0]}}, "hsv_lower"),
    ({"onnx_providers": "CUDA"}, "onnx_providers = 'CUDA': expected a list"),
    ({"host": "0.0.0.0", "access_token": "1234"}, "access_token is too short"),
    ({"max_upload_mb": 0}, "max_upload_mb = 0.0"),
    ({"port": 70000}, "port = 70000"),
    ({"xnnpack": "no"}, "xnnpack = 'no': expected true or false"),
    ({"cell_finder": {"median": 4}}, "cell_finder.median = 4: use 0 (off) or an odd number"),
    ({"cell_finder": {"box_margin": float("inf")}}, "cell_finder.box_margin = inf"),
    ({"quality": {"min_focus": float("nan")}}, "quality.min_focus = nan"),
    ({"min_free_mb": float("inf")}, "min_free_mb = inf"),
    ({"threads": 100_000_000_000}, "threads = 100000000000"),
])
def test_bad_values_name_key_and_value(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_config(values)


def test_bad_toml_and_missing_file(tmp_path):
    (tmp_path / "bad.toml").write_text("camera = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "missing.toml")
