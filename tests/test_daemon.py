import json
import socket
import threading
import time

import numpy as np
import pytest

from leukoscreen.edge.cameras import CameraError, FolderCamera, SyntheticCamera
from leukoscreen.edge.daemon import Daemon
from leukoscreen.edge.device_config import ButtonConfig, parse_config
from leukoscreen.edge.displays import EmulatedDisplay, screen_pages
from leukoscreen.edge.triggers import GpiozeroButton
from leukoscreen.edge.bundle import BundleError

from leukoscreen.edge.synthetic_smear import synthetic_field

from conftest import DEFAULT_TITLE, smear_image, write_rgb


def device(tmp_path, bundle, **values):
    return parse_config({"bundle": str(bundle), "state_dir": str(tmp_path / "state"), "min_free_mb": 0,
                         **values})


def test_capture_is_classified_stored_and_shown(tmp_path, bundle):
    display = EmulatedDisplay(16, 2, png=str(tmp_path / "lcd.png"))
    daemon = Daemon(device(tmp_path, bundle), display)
    result = daemon.capture_once("S-1")
    assert result.decision in ("no_blasts", "indeterminate", "possible_blasts", "unfamiliar", "retake")
    assert result.sample_id == "S-1" and daemon.store.captures("S-1")
    assert display.pages[-1] == ["Research use    ", "only            "]  # the 16x2 screen's second page
    assert (tmp_path / "lcd.png").exists()
    bad = daemon.classify_frame(np.zeros((300, 300, 3), np.uint8))  # all black: retake, still stored
    assert bad.decision == "retake" and "too dark" in bad.message
    wrong_shape = daemon.classify_frame(np.zeros((300, 300), np.uint8))
    assert wrong_shape.decision == "retake" and "unusable frame" in wrong_shape.message
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
    assert daemon.capture_once().decision == "error"
    assert display.lines == ["Error: camera   ", "no frame        "] and daemon.camera.state == "not connected"
    daemon.camera.next_attempt = 0  # skip the back-off wait
    assert daemon.capture_once().decision != "error"
    assert daemon.camera.state.startswith("connected")
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
    assert result.decision == "error" and "Storage full" in result.message
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
    with daemon.queue.busy:
        assert daemon.press() == "busy: press ignored"
    queued = Daemon(device(tmp_path, bundle, button={"while_busy": "queue"}), EmulatedDisplay())
    with queued.queue.busy:
        assert queued.press() == "queued"
    assert queued.queue.requests.qsize() == 1
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


STATES = [("starting", "loading model"), ("ready", ""), ("capturing", ""),
          ("retake", "too dark (check the lamp and exposure)"), ("retake", "out of focus"),
          ("retake", "no white cells found (move to another field)"),
          ("retake", "compressed image (JPEG blocks): set the camera to an uncompressed or high-quality format"),
          ("retake", "too noisy (more light, a lower gain or ISO)"),
          ("result", "no_blasts"),
          ("result", "indeterminate"), ("result", "possible_blasts"), ("result", "unfamiliar"),
          ("error", "No frame from the camera: camera folder /x holds no images"),
          ("error", "Storage full: 3 MB free, 200 MB needed."), ("error", "something unforeseen")]
# what each state must say, whole words on either screen size
EXPECTED = {"starting": "LeukoScreen", "ready": "press", "capturing": "Capturing", "too dark": "too dark",
            "out of focus": "out of focus", "no white cells": "no white cells", "compressed": "compressed",
            "noisy": "too noisy", "no_blasts": "No blasts suggested",
            "indeterminate": "retake", "possible_blasts": "refer", "unfamiliar": "Not screened", "camera": "camera", "Storage full": "Storage full",
            "something": "web page"}


@pytest.mark.parametrize("cols, rows", [(16, 2), (20, 4)])
@pytest.mark.parametrize("state, detail", STATES)
def test_every_state_has_deliberate_text_on_every_screen(state, detail, cols, rows):
    """Fixed texts per state and size, never cut mid-word: on 16x2 the answer is the first page and research use
    only the second (17 characters do not fit 16); on 20x4 research use only is the last line."""
    pages = screen_pages(state, detail, cols, rows)
    assert all(len(page) == rows and all(len(line) == cols for line in page) for page in pages)
    text = " ".join(" ".join(line.strip() for line in page) for page in pages).replace("- ", "")
    key = next(k for k in EXPECTED if k in (detail or state) or k == state)
    assert EXPECTED[key].lower() in text.lower(), (state, detail, pages)
    if rows == 4:
        assert len(pages) == 1 and pages[0][-1].strip() == "Research use only"
    else:
        assert len(pages) == 2 and [line.strip() for line in pages[1]] == ["Research use", "only"]
    if detail == "possible_blasts":
        assert "Possible blasts" in text and "refer" in text


def test_a_real_lcd_shows_its_pages_in_turn(monkeypatch):
    import leukoscreen.edge.displays as displays
    monkeypatch.setattr(displays, "PAGE_SECONDS", 0.05)
    drawn = []

    class Lcd(displays.Display):
        flips_pages = True

        def _draw(self):
            drawn.append(list(self.lines))

    lcd = Lcd(16, 2)
    lcd.show("result", "possible_blasts")
    deadline = time.monotonic() + 5
    while len({tuple(lines) for lines in drawn}) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert {tuple(line.strip() for line in lines) for lines in drawn} == {("Possible blasts:", "refer for review"),
                                                                          ("Research use", "only")}


def test_pipeline_benchmark_reports_every_stage(tmp_path, bundle):
    from leukoscreen.edge.benchmark import benchmark_pipeline
    from leukoscreen.edge.synthetic_smear import synthetic_field
    for seed in range(3):
        write_rgb(tmp_path / "fields" / f"{seed}.png", synthetic_field(seed).image)
    summary = benchmark_pipeline(bundle, tmp_path / "fields", captures=5)
    assert summary["total"]["n"] == 5 and summary["capture"]["median_ms"] > 0
    assert summary["ready_s"] > 0 and summary["peak_rss_mb"] > 10
    assert summary["classify"]["n"] >= 1 and summary["store"]["n"] == 5


def test_web_benchmark_runs_the_device_process_and_loads_its_api(tmp_path, bundle):
    from leukoscreen.edge.synthetic_smear import synthetic_field
    from leukoscreen.edge.web_benchmark import benchmark_web
    for seed in range(3):
        write_rgb(tmp_path / "fields" / f"{seed}.png", synthetic_field(seed).image)
    summary = benchmark_web(bundle, tmp_path / "fields", classifications=5, requests=8, clients=2,
                            out=tmp_path / "out", xnnpack=False)
    assert summary["classify"]["statuses"] == {200: 5} and summary["classify"]["median_ms"] > 0
    assert summary["rss_mb"]["ready"] > 10 and "growth_over_classifications" in summary["rss_mb"]
    parts = summary["rss_parts_after_mb"]   # VmRSS = anonymous + mapped files (+ shared memory)
    assert parts["anonymous"] > 10 and parts["mapped_files"] > 1
    assert parts["anonymous"] + parts["mapped_files"] <= summary["rss_mb"]["after_5_classifications"] + 1
    assert [load["ok"] for load in summary["load"]] == [8, 8, 8]
    assert json.loads((tmp_path / "out" / "web.json").read_text())["classify"]["n"] == 5


def test_compared_bundles_run_side_by_side_and_only_one_decides(tmp_path, bundle):
    from leukoscreen.edge.screening import DEFAULT_BUNDLE
    daemon = Daemon(device(tmp_path, bundle, compare_bundles=[str(DEFAULT_BUNDLE)]), EmulatedDisplay())
    result = daemon.classify_frame(synthetic_field(4).image, "S-9")
    assert result.bundle == daemon.models.deciding.title != DEFAULT_TITLE
    assert [c.bundle for c in result.compared] == [DEFAULT_TITLE]
    assert result.compared[0].decision in ("no_blasts", "indeterminate", "possible_blasts", "unfamiliar")
    stored = json.loads(daemon.store.captures("S-9")[0]["result"])
    assert stored["compared"] == [c.model_dump() for c in result.compared]
    assert daemon.status_view().compared_bundles == [DEFAULT_TITLE]
    daemon.close()


def test_xnnpack_false_runs_every_bundle_on_the_built_in_kernels(tmp_path, bundle):
    from leukoscreen.edge.screening import DEFAULT_BUNDLE
    daemon = Daemon(device(tmp_path, bundle, compare_bundles=[str(DEFAULT_BUNDLE)], xnnpack=False), EmulatedDisplay())
    assert [m.runner.name for m in (daemon.models.deciding, *daemon.models.compared)] == ["litert built-in"] * 2
    assert daemon.status_view().bundle.runtime == "litert built-in"  # the status page shows it
    assert daemon.classify_frame(synthetic_field(4).image, "S-1").decision in (
        "no_blasts", "indeterminate", "possible_blasts", "unfamiliar")
    daemon.close()


def test_reload_takes_a_valid_bundle_and_keeps_the_last_good_one(tmp_path, bundle):
    import shutil

    from leukoscreen.edge.capture_queue import RELOAD
    from leukoscreen.edge.screening import DEFAULT_BUNDLE
    live = tmp_path / "live"
    shutil.copytree(bundle, live)
    daemon = Daemon(device(tmp_path, live), EmulatedDisplay())
    first = daemon.models.deciding.title
    model = daemon.models.deciding.bundle.file()
    model.write_bytes(model.read_bytes()[:-10] + b"x" * 10)  # a copy that went wrong
    assert daemon.reload() is False
    assert "refused" in daemon.status.message and first in daemon.status.message
    assert daemon.models.deciding.title == first
    assert daemon.classify_frame(synthetic_field(2).image).decision != "error"  # still screening
    from leukoscreen.edge import daemon as daemon_module

    def out_of_memory(config):  # what a manifest asking for a terabyte of self-test fields did
        raise MemoryError("Unable to allocate 1.10 TiB")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(daemon_module.ModelSet, "load", out_of_memory)
        assert daemon.reload() is False and "1.10 TiB" in daemon.status.message
    assert daemon.models.deciding.title == first
    shutil.rmtree(live)
    shutil.copytree(DEFAULT_BUNDLE, live)  # a good new version
    loop = threading.Thread(target=daemon.run, daemon=True)
    loop.start()
    daemon.queue.control(RELOAD)  # what SIGHUP (systemctl reload) does
    deadline = time.monotonic() + 30
    while daemon.models.deciding.title == first and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.stop()
    loop.join(10)
    assert daemon.models.deciding.title == DEFAULT_TITLE
    events = [row[0] for row in daemon.store.db.execute("SELECT event FROM audit")]
    assert "bundle_reload_refused" in events and "bundle_reloaded" in events
    daemon.close()


def test_luma_screen_draws_every_line_and_a_missing_screen_is_not_fatal():
    from luma.core.device import dummy

    from leukoscreen.edge.device_config import DisplayConfig
    from leukoscreen.edge.displays import Display, LumaDisplay, open_display
    screen = LumaDisplay(DisplayConfig(kind="luma", cols=20, rows=4), device=dummy(width=128, height=64, mode="1"))
    screen.show("result", "possible_blasts")
    pixels = np.array(screen.device.image)
    rows_with_ink = [pixels[r * 16:(r + 1) * 16].any() for r in range(4)]
    assert rows_with_ink[0] and rows_with_ink[3]  # the answer and "Research use only"
    assert screen.lines[-1].startswith("Research use only")
    fallback = open_display(DisplayConfig(kind="luma", i2c_address=0x3C))  # no I2C bus on this machine
    assert type(fallback) is Display
