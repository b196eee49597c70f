"""The device under hostile input: each case a tester found, answered with a 4xx (or a clear CLI message) that
says what was wrong, and the device still serving."""
from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time
import zipfile
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

from leukoscreen.cli import main
from leukoscreen.edge.device_config import ConfigError, load_config, parse_config
from leukoscreen.edge.synthetic_smear import synthetic_field

from conftest import encode


def hdr_header(width: int, height: int) -> bytes:
    """A Radiance .hdr file: OpenCV decodes it, Pillow cannot read its size from the header."""
    return b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n" + f"-Y {height} +X {width}\n".encode() + b"\0" * 4096


@pytest.mark.parametrize("sample_id", ["بیمار-۱۲", "Łódź-1", "S 12.a:3"])
def test_export_names_any_script_and_marks_only_what_was_sent(device, sample_id):
    client = device.client
    assert client.post("/api/classify", json={"sample_id": sample_id}).status_code == 200
    answer = client.post("/api/export", json={"format": "zip", "sample_id": sample_id})
    assert answer.status_code == 200, answer.text
    disposition = answer.headers["content-disposition"]  # RFC 6266 / 5987: an ASCII fallback and the name
    assert disposition.startswith('attachment; filename="leukoscreen-') and "filename*=UTF-8''" in disposition
    assert unquote(disposition.split("filename*=UTF-8''")[1]).startswith(f"leukoscreen-{sample_id}-")
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.read("results.csv").decode().count(sample_id) == 1
    assert [row["exported"] for row in device.daemon.store.captures(sample_id)] == [1]


def test_sample_ids_that_look_alike_are_one_sample(device):
    for typed in ("S-12", "Ｓ-１２", " S-12 "):  # full-width letters and digits, spaces around
        assert device.client.post("/api/classify", json={"sample_id": typed}).status_code == 200
    assert {row["sample_id"] for row in device.daemon.store.captures()} == {"S-12"}
    assert len(device.client.get("/api/samples/Ｓ-12").json()["captures"]) == 3
    assert device.client.post("/api/classify", json={"sample_id": "A\u0301"}).status_code == 200  # composed: Á
    assert device.daemon.store.captures("\u00c1")[0]["sample_id"] == "\u00c1"


@pytest.mark.parametrize("sample_id", ["a\r\nX-Injected: 1", "😀", "x" * 65, "a/b", "../x", "\0"])
def test_sample_ids_follow_one_rule(device, sample_id):
    answer = device.client.post("/api/classify", json={"sample_id": sample_id})
    assert answer.status_code == 400 and "letters or digits" in answer.json()["detail"]
    form = device.client.post("/api/classify", files={"file": ("f.png", encode(synthetic_field(1, 200).image))},
                              data={"sample_id": sample_id})
    assert form.status_code == 400 and "letters or digits" in form.json()["detail"]
    assert device.daemon.store.captures() == []


@pytest.mark.parametrize("name, data, reason", [
    ("bomb.hdr", hdr_header(8000, 8000), "not a readable image of a supported kind"),
    ("image.gif", cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes().replace(b"PNG", b"GIF", 1),
     "not a readable image"),
])
def test_only_formats_whose_size_was_read_first_are_decoded(device, name, data, reason):
    answer = device.client.post("/api/classify", files={"file": (name, data)})
    assert answer.status_code == 400 and reason in answer.json()["detail"]


def test_busy_is_decided_before_an_upload_is_read(device):
    big = encode(synthetic_field(2, 1500).image)
    with device.daemon.queue.busy:  # a capture is running
        answers = [device.client.post("/api/classify", files={"file": ("f.png", big)}) for _ in range(3)]
    assert [a.status_code for a in answers] == [409] * 3
    assert device.client.post("/api/classify", files={"file": ("f.png", big)}).status_code == 200


@pytest.mark.parametrize("method, path, body, status, reason", [
    ("POST", "/api/classify", b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    ("GET", "/api/results/" + "9" * 30, None, 422, "less than or equal"),
    ("POST", "/api/export", json.dumps({"format": ["zip"]}).encode(), 400, "format = ['zip']"),
    ("POST", "/api/export", json.dumps({"sample_id": ["a"]}).encode(), 400, "sample_id = ['a']: expected text"),
    ("POST", "/api/export", json.dumps({"since": "notadate"}).encode(), 400, "not an ISO date"),
    ("GET", "/api/results?since=notadate", None, 422, "not an ISO date"),
    ("GET", "/api/results?until=2026-13-40", None, 422, "not an ISO date"),
    ("GET", "/api/results?since=9999-12-31T23:59:59-23:59", None, 422, "not an ISO date"),  # past year 9999 in UTC
    ("POST", "/api/export", json.dumps({"since": "0001-01-01T00:00:00+23:59"}).encode(), 400, "not an ISO date"),
    ("POST", "/api/export", json.dumps({"format": None, "sample_id": 0}).encode(), 400, "sample_id = 0"),
    ("POST", "/api/export", json.dumps({"sample_id": False}).encode(), 400, "sample_id = False"),
])
def test_request_shapes_get_a_4xx_with_the_reason(device, method, path, body, status, reason):
    headers = {"content-type": "application/json"} if body is not None else {}
    answer = device.client.request(method, path, content=body, headers=headers)
    assert answer.status_code == status and reason in answer.text, (answer.status_code, answer.text[:300])
    assert device.client.get("/api/status").status_code == 200


def test_head_is_answered_like_get_and_since_until_work(device):
    assert device.client.head("/api/status").status_code == 200
    assert device.client.head("/").status_code == 200
    device.client.post("/api/classify", json={"sample_id": "T"})
    assert len(device.client.get("/api/results", params={"since": "2000-01-01"}).json()["captures"]) == 1
    assert device.client.get("/api/results", params={"until": "2000-01-01T00:00+02:00"}).json()["captures"] == []


def test_a_stalled_request_body_is_timed_out(device, monkeypatch):
    import leukoscreen.edge.web.dependencies as dependencies
    monkeypatch.setattr(dependencies, "BODY_TIMEOUT_S", 0.5)
    host, port = device.server.host, device.server.port
    with socket.create_connection((host, port), timeout=10) as connection:
        connection.sendall(b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 100\r\n\r\n{")  # and nothing more
        answer = b""
        while b"did not arrive" not in answer and (chunk := connection.recv(4096)):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within" in answer


def test_wrong_bearer_tokens_lock_out_that_client_only(token_device):
    from types import SimpleNamespace

    from leukoscreen.edge.web.access import AccessRule, LockedOut
    client = token_device.client
    answers = [client.get("/api/status", headers={"authorization": f"Bearer guess-{i}"}).status_code
               for i in range(7)]
    assert answers == [401] * 5 + [429] * 2
    assert client.get("/api/status", headers={"authorization": "Bearer open-sesame-42"}).status_code == 429

    def request(host, token):
        return SimpleNamespace(client=SimpleNamespace(host=host), headers={"authorization": f"Bearer {token}"},
                               cookies={})
    rule = AccessRule("open-sesame-42")
    assert [rule.authorized(request("10.0.0.1", f"guess-{i}")) for i in range(5)] == [False] * 5
    with pytest.raises(LockedOut):
        rule.authorized(request("10.0.0.1", "open-sesame-42"))
    assert rule.authorized(request("10.0.0.2", "open-sesame-42")) is True  # another address is not locked out


@pytest.mark.parametrize("token", ["123456", "aaaaaaaaaaaaaaaa", "short-pass"])
def test_access_tokens_need_real_entropy(token):
    with pytest.raises(ConfigError, match="at least 12 characters, 8 of them different"):
        parse_config({"host": "0.0.0.0", "access_token": token})


@pytest.mark.parametrize("values, message", [
    ({"camera": {"kind": "folder"}}, "camera.folder = '': not a folder of images"),
    ({"camera": {"kind": "folder", "folder": ""}}, "set camera.folder, or --camera-folder"),
    ({"min_free_mb": -5}, "min_free_mb = -5"),
    ({"quality": {"min_focus": float("-inf")}}, "quality.min_focus = -inf"),
    ({"quality": {"max_dark_fraction": 2.0}}, "quality.max_dark_fraction = 2.0"),
])
def test_configurations_that_would_silently_misbehave_are_refused(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_config(values)


def test_a_binary_configuration_file_is_named(tmp_path):
    path = tmp_path / "config.toml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe binary")
    with pytest.raises(ConfigError, match=f"configuration file {path} is not a text file"):
        load_config(path)


def test_cli_errors_are_messages(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('bundle_format = "onnx-fp32"\n')
    assert main(["serve", "--config", str(config), "--port", "0"]) == 2
    assert "has no 'onnx-fp32' model; it has: tflite-int8, onnx-int8" in capsys.readouterr().err
    config.write_text('state_dir = "/proc/leukoscreen"\n')
    assert main(["serve", "--config", str(config), "--port", "0"]) == 2
    assert "state directory /proc/leukoscreen cannot be created" in capsys.readouterr().err
    assert main(["export", "--state-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.zip")]) == 2
    assert "holds no results (no results.sqlite3)" in capsys.readouterr().err
    from leukoscreen.edge.result_store import ResultStore
    ResultStore(tmp_path / "s", min_free_mb=0).close()
    assert main(["export", "--state-dir", str(tmp_path / "s"), "--out", str(tmp_path / "x.zip"),
                 "--since", "yesterday"]) == 2
    assert "'yesterday' is not an ISO date or time" in capsys.readouterr().err


def test_ipv6_loopback_is_answered_and_shown_right(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 cannot be bound here")
    from leukoscreen.edge.daemon import Daemon
    from leukoscreen.edge.displays import Display
    from leukoscreen.edge.web import WebServer
    import httpx
    daemon = Daemon(parse_config({"state_dir": str(tmp_path / "s"), "min_free_mb": 0, "host": "::1", "port": 0}),
                    Display())
    server = WebServer(daemon)
    server.start()
    try:
        assert server.url.startswith("http://[::1]:")
        assert httpx.get(server.url + "/api/status", timeout=10).status_code == 200
        assert httpx.get(server.url + "/api/status", headers={"host": "evil.example"}, timeout=10).status_code == 400
    finally:
        server.stop()
        daemon.close()


def test_serve_stops_cleanly_with_requests_waiting(tmp_path):
    """SIGTERM while classifications wait: the process exits 0 and no client is left hanging."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "c.toml"
    config.write_text(f'state_dir = "{tmp_path / "s"}"\nport = {port}\nmin_free_mb = 0\n[button]\nwhile_busy = "queue"\n')
    process = subprocess.Popen([sys.executable, "-m", "leukoscreen.cli", "serve", "--config", str(config)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.1)

        def classify(_):
            try:
                return httpx.post(f"http://127.0.0.1:{port}/api/classify", json={}, timeout=30).status_code
            except httpx.TransportError:
                return "closed"
        with ThreadPoolExecutor(8) as pool:
            waiting = [pool.submit(classify, i) for i in range(8)]
            time.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            answers = [w.result(timeout=40) for w in waiting]
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors.decode()[-2000:]
    assert set(answers) <= {200, 503, "closed"} and "Traceback" not in errors.decode()


def test_a_model_file_changed_under_a_running_device_changes_nothing(tmp_path):
    """The runtime works from the bytes that were checked against their hash: a file overwritten in place or cut
    short on disk afterwards changes no answer and cannot crash the process; a reload then refuses it."""
    import shutil

    from leukoscreen.edge.daemon import Daemon
    from leukoscreen.edge.displays import Display
    from leukoscreen.edge.screening import DEFAULT_BUNDLE
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    daemon = Daemon(parse_config({"bundle": str(bundle), "state_dir": str(tmp_path / "s"), "min_free_mb": 0,
                                  "xnnpack": False}), Display())
    field = synthetic_field(6).image
    before = daemon.classify_frame(field)
    model = daemon.models.deciding.bundle.file()
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2] + bytes(len(data) // 2))  # overwritten in place
    assert daemon.classify_frame(field).probabilities == before.probabilities
    model.write_bytes(data[:1000])  # cut short: a mapped file would now kill the process (SIGBUS)
    assert daemon.classify_frame(field).probabilities == before.probabilities
    assert daemon.reload() is False and "does not match its sha256" in daemon.status.message
    daemon.close()


def test_a_desktop_command_on_a_device_install_says_what_to_install(monkeypatch, capsys):
    """`make run` installs the device side only: a desktop command there names what is missing, no traceback."""
    from leukoscreen import cli

    def needs_imagehash(args):
        import importlib
        monkeypatch.setitem(sys.modules, "imagehash", None)   # as when it is not installed
        importlib.import_module("imagehash")
    monkeypatch.setattr(cli, "_robustness", needs_imagehash)
    assert cli.main(["robustness", "edge/default_bundle", "--data", "x"]) == 2
    err = capsys.readouterr().err
    assert "`leukoscreen robustness` needs imagehash, which is not installed" in err
    assert "make install" in err


def test_sigterm_stops_a_command_as_ctrl_c_does(monkeypatch, capsys, tmp_path):
    """systemd and `timeout` stop with SIGTERM: the command unwinds (its half-written output removed by its own
    cleanup, as for Ctrl-C) instead of dying where it stands."""
    import os
    import signal

    from leukoscreen import cli
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    partial = tmp_path / ".out.adapting-x"

    def long_command(args):
        partial.mkdir()
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            partial.rmdir()
    monkeypatch.setattr(cli, "_robustness", long_command)
    try:
        assert cli.main(["robustness", "edge/default_bundle", "--data", "x"]) == 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert "stopped" in capsys.readouterr().err and not partial.exists()
