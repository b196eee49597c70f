"""The device's HTTP API against a real server on 127.0.0.1 (uvicorn in a thread), the shipped default
bundle and a folder-replay camera: results, bad input, access rules."""
from __future__ import annotations

import io
import json
import time
import zipfile

import cv2
import numpy as np
import pytest

from leukoscreen.edge.cameras import CameraError
from leukoscreen.edge.synthetic_smear import synthetic_field
from leukoscreen.edge.web.access import COOKIE

from conftest import DEFAULT_TITLE, Device, encode, png_bomb


def test_status_preview_classify_results_samples(device):
    client = device.client
    status = client.get("/api/status").json()
    assert status["bundle"]["name"] == "leukoscreen-default" and len(status["bundle"]["sha256"]) == 64
    assert status["camera"].startswith("connected") and status["disk"]["free_mb"] > 0
    assert "Research use only" in status["notice"] and status["software_version"]

    preview = client.get("/api/preview.jpg")
    assert preview.headers["content-type"] == "image/jpeg" and float(preview.headers["x-focus-score"]) > 0
    assert cv2.imdecode(np.frombuffer(preview.content, np.uint8), cv2.IMREAD_COLOR).shape[2] == 3

    answer = client.post("/api/classify", json={"sample_id": "S-1"})
    assert answer.status_code == 200, answer.text
    capture = answer.json()
    assert capture["sample_id"] == "S-1" and capture["decision"] in ("no_blasts", "indeterminate", "possible_blasts",
                                                                           "unfamiliar")
    assert "Research use only" in capture["message"] and capture["result"]["source"] == "camera"
    assert len(capture["result"]["cells"]) == capture["result"]["cells_found"] >= 1
    assert capture["bundle"] == DEFAULT_TITLE
    image = client.get(capture["image_url"])
    assert image.headers["content-type"] == "image/png"
    assert cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR).shape == (320, 320, 3)
    thumbnail = client.get(capture["thumbnail_url"])
    assert cv2.imdecode(np.frombuffer(thumbnail.content, np.uint8), cv2.IMREAD_COLOR).shape[1] == 200

    upload = client.post("/api/classify", files={"file": ("field.jpg", encode(synthetic_field(7, 320).image, ".jpg"))},
                         data={"sample_id": "S-1"})
    assert upload.status_code == 200 and upload.json()["result"]["source"] == "upload: field.jpg"

    assert client.post("/api/classify").status_code == 200  # empty body: a capture with a new sample id
    listed = client.get("/api/results", params={"sample_id": "S-1"}).json()["captures"]
    assert [c["id"] for c in listed] == [upload.json()["id"], capture["id"]]
    assert client.get(f"/api/results/{capture['id']}").json()["image_sha256"] == capture["image_sha256"]
    samples = client.get("/api/samples").json()["samples"]
    assert len(samples) == 2 and {s["id"] for s in samples} >= {"S-1"}
    assert client.get("/api/samples/S-1").json()["captures"][0]["id"] == upload.json()["id"]
    assert "/api/classify" in client.get("/openapi.json").json()["paths"]
    assert client.get("/").text.count("Research use only") >= 1


def test_exports_zip_csv_json(device):
    client = device.client
    for sample in ("A", "A", "B"):
        assert client.post("/api/classify", json={"sample_id": sample}).status_code == 200
    archive = client.post("/api/export", data={"format": "zip", "sample_id": "A"})
    assert archive.status_code == 200 and "attachment" in archive.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(archive.content)) as opened:
        assert sum(name.startswith("images/") for name in opened.namelist()) == 2
        assert "Research use only" in opened.read("NOTICE.txt").decode()
    table = client.post("/api/export", json={"format": "csv"}).text.splitlines()
    assert table[0].startswith("id,sample_id") and len(table) == 4 and "Research use only" in table[1]
    records = client.post("/api/export", json={"format": "json", "sample_id": "B"}).json()
    assert len(records["captures"]) == 1 and "Research use only" in records["notice"]
    # the temporary zip is removed by a background task after the server has sent the response, so
    # possibly after the client has it: allow the server a moment
    deadline = time.monotonic() + 5
    while list(device.daemon.store.root.glob(".export-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(device.daemon.store.root.glob(".export-*"))
    assert client.post("/api/export", json={"format": "rar"}).status_code == 400
    assert client.post("/api/export", json={"sample_id": "nobody"}).status_code == 404


@pytest.mark.parametrize("name, data, status, reason", [
    ("empty.png", b"", 400, "empty"),
    ("cut.jpg", encode(synthetic_field(1, 200).image, ".jpg")[:3000], 400, "truncated"),
    ("notes.png", b"this is a text file, not a picture", 400, "not a readable image"),
    ("bomb.png", png_bomb(20_000, 20_000), 400, "pixel limit"),
])
def test_bad_uploads_get_a_reason_and_the_device_keeps_serving(device, name, data, status, reason):
    answer = device.client.post("/api/classify", files={"file": (name, data)})
    assert answer.status_code == status and reason in answer.json()["detail"]
    assert device.client.get("/api/status").status_code == 200
    assert device.daemon.store.captures() == []  # nothing half-stored


@pytest.mark.parametrize("kind", ["gray", "rgba", "16-bit"])
def test_grayscale_rgba_and_16_bit_uploads_are_classified(device, kind):
    field = synthetic_field(3, 256).image
    image = {"gray": cv2.cvtColor(field, cv2.COLOR_RGB2GRAY),
             "rgba": cv2.cvtColor(field, cv2.COLOR_RGB2BGRA),
             "16-bit": cv2.cvtColor(field, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257}[kind]
    answer = device.client.post("/api/classify", files={"file": (f"{kind}.png", encode(image))})
    assert answer.status_code == 200 and answer.json()["decision"] != "error"


def test_malformed_requests_get_4xx_with_a_reason(device):
    client = device.client
    cases = [
        (client.post("/api/classify", content=b"{not json", headers={"content-type": "application/json"}), 400,
         "not valid JSON"),
        (client.post("/api/classify", json=["S-1"]), 400, "must be an object"),
        (client.post("/api/classify", json={"sample_id": 12}), 400, "expected text"),
        (client.post("/api/classify", json={"sample_id": "../../etc"}), 400, "no slashes"),
        (client.post("/api/classify", content=b"x", headers={"content-type": "text/plain"}), 415, "content type"),
        (client.post("/api/classify", files={"picture": ("a.png", b"x")}), 400, "field 'file'"),
        (client.get("/api/samples/nobody"), 404, "no sample"),
        (client.get("/api/results/99999"), 404, "no capture"),
        (client.get("/api/images/nothing.png"), 404, "no stored image"),
        (client.get("/api/images/%00"), 404, "no stored image"),
        (client.get("/api/images/" + "a" * 300), 404, "no stored image"),
        (client.get("/api/results/9223372036854775808"), 422, "less than or equal"),
        (client.post("/api/export", content=b"format=zip", headers={"content-type": "text/plain"}), 415,
         "content type"),
        (client.post("/api/export", json={"format": 0}), 400, "format = 0"),
    ]
    for answer, status, reason in cases:
        assert answer.status_code == status and reason in answer.text, (answer.status_code, answer.text)
    assert client.get("/api/status").status_code == 200


@pytest.fixture
def small_uploads_device(tmp_path):
    running = Device(tmp_path, max_upload_mb=2.0)
    yield running
    running.close()


def test_upload_size_limit_is_checked_before_reading(small_uploads_device):
    answer = small_uploads_device.client.post("/api/classify", files={"file": ("big.png", b"\0" * 2_100_000)})
    assert answer.status_code == 413 and "limit is 2 MB" in answer.json()["detail"]
    chunked = small_uploads_device.client.post("/api/classify", content=iter([b"{", b"}"]),
                                               headers={"content-type": "application/json"})
    assert chunked.status_code == 411 and "Content-Length" in chunked.json()["detail"]


def test_paths_never_leave_the_image_folder(device):
    (device.daemon.store.root / "secret.txt").write_text("not for the web")
    for path in ("/api/images/..%2Fsecret.txt", "/api/images/..%2F..%2Fresults.sqlite3", "/api/images/%2E%2E",
                 "/api/images/..%5Csecret.txt", "/static/..%2F..%2Fweb.py"):
        answer = device.client.get(path)
        assert answer.status_code == 404 and "not for the web" not in answer.text, path


def test_foreign_host_and_cross_site_posts_are_refused(device):
    client = device.client
    assert client.get("/api/status", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding
    own = device.server.url
    for headers in ({"origin": "http://attacker.example"}, {"sec-fetch-site": "cross-site"},
                    {"sec-fetch-site": "same-site"}):
        answer = client.post("/api/classify", json={}, headers=headers)
        assert answer.status_code == 403 and "cross-site" in answer.json()["detail"]
    assert device.daemon.store.captures() == []
    same = client.post("/api/classify", json={}, headers={"origin": own, "sec-fetch-site": "same-origin"})
    assert same.status_code == 200


def test_busy_device_answers_409(device):
    with device.daemon.queue.busy:  # a classification is running (button or another page)
        answer = device.client.post("/api/classify", json={})
    assert answer.status_code == 409 and "running" in answer.json()["detail"]


def test_missing_camera_is_reported_not_fatal(tmp_path):
    def no_camera(config):
        raise CameraError("camera not connected (unplugged in this test)")

    running = Device(tmp_path, camera_factory=no_camera)
    try:
        preview = running.client.get("/api/preview.jpg")
        assert preview.status_code == 503 and "unplugged in this test" in preview.json()["detail"]
        answer = running.client.post("/api/classify", json={})  # the camera's own words, not a guess at the cause
        assert answer.status_code == 503 and answer.json()["message"] == (
            "No frame from the camera: camera not connected (unplugged in this test)")
        assert running.client.get("/api/status").json()["camera"] == "not connected"
        upload = running.client.post("/api/classify", files={"file": ("f.png", encode(synthetic_field(2, 256).image))})
        assert upload.status_code == 200  # uploads still work without a camera
    finally:
        running.close()


def test_access_token_is_required_and_kept_in_a_strict_cookie(token_device):
    client = token_device.client
    assert client.get("/api/status").status_code == 401
    page = client.get("/")
    assert page.status_code == 401 and "access token" in page.text and 'name="token"' in page.text
    assert client.get("/api/status", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/status", headers={"authorization": "Bearer open-sesame-42"}).status_code == 200
    assert client.post("/api/login", data={"token": "wrong"}).status_code == 401
    login = client.post("/api/login", data={"token": "open-sesame-42"})
    assert login.status_code == 303
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "open-sesame-42" not in cookie
    assert client.get("/api/status").status_code == 200 and client.cookies.get(COOKIE)
    assert client.post("/api/classify", json={}).status_code == 200


def test_repeated_wrong_tokens_lock_the_login(token_device):
    client = token_device.client
    answers = [client.post("/api/login", data={"token": f"guess-{i}"}).status_code for i in range(6)]
    assert answers == [401] * 5 + [429]
    assert client.post("/api/login", data={"token": "open-sesame-42"}).status_code == 429  # until it expires


def test_results_survive_a_restart_and_are_served_again(tmp_path):
    first = Device(tmp_path)
    stored = first.client.post("/api/classify", json={"sample_id": "keep"}).json()
    first.close()
    second = Device(tmp_path)
    try:
        again = second.client.get(f"/api/results/{stored['id']}").json()
        assert again["image_sha256"] == stored["image_sha256"]
        assert json.loads(json.dumps(again["result"]))["cells"] == stored["result"]["cells"]
    finally:
        second.close()


def test_serve_command_runs_the_page_and_stops_cleanly(tmp_path):
    """`leukoscreen serve` as the README starts it: the page answers, SIGTERM stops it with status 0, and a
    port already in use is a clear error."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "leukoscreen.cli", "serve", "--camera", "synthetic", "--port", str(port),
               "--state-dir", str(tmp_path / "state")]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()
            try:
                status = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the device did not answer within 60 s"
                time.sleep(0.1)
        assert status.status_code == 200 and status.json()["camera"] == "connected (synthetic)"
        assert httpx.post(f"http://127.0.0.1:{port}/api/classify", json={}, timeout=30).status_code == 200
        second = subprocess.run(command[:-2] + ["--state-dir", str(tmp_path / "other")], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"could not listen on 127.0.0.1:{port}" in second.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and f"web page http://127.0.0.1:{port}" in out
