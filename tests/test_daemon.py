import socket
import threading

import numpy as np
import pytest

from leukoscreen.edge.cameras import CameraError, FolderCamera, SyntheticCamera
from leukoscreen.edge.daemon import Daemon
from leukoscreen.edge.device_config import ButtonConfig, parse_config
from leukoscreen.edge.displays import EmulatedDisplay, screen_lines
from leukoscreen.edge.triggers import GpiozeroButton
from leukoscreen.edge.bundle import BundleError

from conftest import smear_image, write_rgb


def device(tmp_path, bundle, **values):
    return parse_config({"bundle": str(bundle), "state_dir": str(tmp_path / "state"), "min_free_mb": 0,
                         **values})


def test_capture_is_classified_stored_and_shown(tmp_path, bundle):
    display = EmulatedDisplay(16, 2, png=str(tmp_path / "lcd.png"))
    daemon = Daemon(device(tmp_path, bundle), display)
    result = daemon.capture_once("S-1")
    assert result["decision"] in ("no_blasts", "indeterminate", "possible_blasts", "retake")
    assert result["sample_id"] == "S-1" and daemon.store.captures("S-1")
    assert display.lines[-1].startswith("Research use")
    assert (tmp_path / "lcd.png").exists()
    bad = daemon.classify_frame(np.zeros((300, 300, 3), np.uint8))  # all black: retake, still stored
    assert bad["decision"] == "retake" and "too dark" in bad["message"]
    wrong_shape = daemon.classify_frame(np.zeros((300, 300), np.uint8))
    assert wrong_shape["decision"] == "retake" and "unusable frame" in wrong_shape["message"]
    daemon.close()


def test_missing_camera_keeps_daemon_running_and_recovers(tmp_path, bundle):
    attempts = []

    def flaky_camera(config):
        attempts.append(1)
        if len(attempts) < 2:
            raise CameraError("camera not connected (test)")
        return SyntheticCamera()

    display = EmulatedDisplay()
    daemon = Daemon(device(tmp_path, bundle), display, camera_factory=flaky_camera)
    assert daemon.capture_once()["decision"] == "error"
    assert "Camera not" in " ".join(display.lines) and daemon.status.camera == "not connected"
    daemon.next_camera_attempt = 0  # skip the back-off wait
    assert daemon.capture_once()["decision"] != "error"
    assert daemon.status.camera.startswith("connected")
    daemon.close()


def test_bad_bundle_refuses_to_start(tmp_path, bundle):
    with pytest.raises(BundleError, match="no manifest.json"):
        Daemon(device(tmp_path, tmp_path))


def test_full_disk_is_shown_and_nothing_lost(tmp_path, bundle):
    display = EmulatedDisplay(20, 4)
    daemon = Daemon(device(tmp_path, bundle), display)
    daemon.capture_once()
    daemon.store.min_free_mb = 1e12
    result = daemon.capture_once()
    assert result["decision"] == "error" and "Storage full" in result["message"]
    assert "Storage full" in " ".join(display.lines)
    assert len(daemon.store.captures()) == 1
    daemon.close()


def test_systemd_notifications_and_button_presses(tmp_path, bundle, monkeypatch):
    from gpiozero.pins.mock import MockFactory
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    daemon = Daemon(device(tmp_path, bundle), EmulatedDisplay())
    factory = MockFactory()
    button = GpiozeroButton(ButtonConfig(kind="gpiozero", pin=17, debounce_s=0), daemon.press, pin_factory=factory)
    runner = threading.Thread(target=daemon.run)
    runner.start()
    messages = [listener.recv(1024).decode() for _ in range(4)]
    assert messages[0] == "READY=1" and "WATCHDOG=1" in messages
    pin = factory.pin(17)
    pin.drive_low()   # press (pull-up: pressed pulls the pin low)
    pin.drive_high()
    for _ in range(100):
        if daemon.status.captures:
            break
        listener.recv(1024)
    daemon.stop()
    runner.join(timeout=10)
    button.close()
    listener.close()
    assert daemon.status.captures == 1 and not runner.is_alive()
    daemon.close()


def test_presses_while_busy_are_ignored_or_queued(tmp_path, bundle):
    daemon = Daemon(device(tmp_path, bundle), EmulatedDisplay())
    with daemon.busy:
        assert daemon.press() == "busy: press ignored"
    queued = Daemon(device(tmp_path, bundle, button={"while_busy": "queue"}), EmulatedDisplay())
    with queued.busy:
        assert queued.press() == "queued"
    assert queued.requests.qsize() == 1
    daemon.close()
    queued.close()


def test_folder_camera_cycles_and_skips_bad_files(tmp_path):
    write_rgb(tmp_path / "a.png", smear_image(np.random.default_rng(0), True))
    (tmp_path / "b.jpg").write_bytes(b"broken")
    camera = FolderCamera(tmp_path)
    assert camera.capture().shape == (96, 96, 3) and camera.capture().shape == (96, 96, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CameraError, match="no images"):
        FolderCamera(tmp_path / "empty")


def test_screen_lines_fit_every_screen():
    for cols, rows in ((16, 2), (20, 4)):
        lines = screen_lines("result", "possible_blasts", cols, rows)
        assert len(lines) == rows and all(len(line) == cols for line in lines)
        assert lines[-1].strip() == "Research use only"[:cols].strip()
    assert screen_lines("retake", "out of focus", 16, 2)[0].startswith("Retake out of")


def test_pipeline_benchmark_reports_every_stage(tmp_path, bundle):
    from leukoscreen.edge.benchmark import benchmark_pipeline
    from leukoscreen.edge.synthetic_smear import synthetic_field
    for seed in range(3):
        write_rgb(tmp_path / "fields" / f"{seed}.png", synthetic_field(seed).image)
    summary = benchmark_pipeline(bundle, tmp_path / "fields", captures=5)
    assert summary["total"]["n"] == 5 and summary["capture"]["median_ms"] > 0
    assert summary["ready_s"] > 0 and summary["peak_rss_mb"] > 10
    assert summary["classify"]["n"] >= 1 and summary["store"]["n"] == 5
