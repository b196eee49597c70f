"""Many devices, one clinic network: the outbox and its sender against Debian's real mosquitto broker (started
here on a loopback port), the device killed mid-send, the regional collector in SQLite and PostgreSQL."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from leukoscreen.edge.collector import Collector, collector_app
from leukoscreen.edge.collector_store import CollectorStore, MessageError
from leukoscreen.edge.device_config import ConfigError, parse_config

from conftest import REPO, Device

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, seconds: float = 30.0, what: str = "the condition"):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds:g} s"
        time.sleep(0.05)


class Broker:
    """mosquitto on 127.0.0.1:port, persistent (a stopped broker keeps its sessions and queued messages)."""

    def __init__(self, folder: Path, extra: str = "allow_anonymous true\n"):
        self.port, self.folder = free_port(), folder
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\npersistence true\n"
                             f"persistence_location {folder}/\nuser {os.environ.get('USER', 'root')}\n"
                             "max_queued_messages 0\n" + extra)
        self.process = None
        self.url = f"mqtt://127.0.0.1:{self.port}"

    def start(self):
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)

        def listening():
            assert self.process.poll() is None, self.process.communicate()[1]
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0
        wait_for(listening, 10, "mosquitto listening")

    def stop(self):
        self.process.terminate()  # saves its persistence file
        self.process.wait(10)


@pytest.fixture
def broker(tmp_path):
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (README: apt install mosquitto); the MQTT tests need the real broker")
    running = Broker(tmp_path / "broker")
    running.start()
    yield running
    if running.process.poll() is None:
        running.process.send_signal(signal.SIGCONT)
        running.stop()


class Listener:
    """A subscriber to leukoscreen/#, with a persistent session: what it misses while the broker is down waits
    on the broker."""

    def __init__(self, broker: Broker, client_id: str = "test-listener"):
        self.messages: list[tuple[str, bool, dict]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda client, *_: client.subscribe("leukoscreen/#", 1)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.retain, json.loads(m.payload)))
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        wait_for(self.client.is_connected, 10, "the listener connecting")

    def results(self) -> list[dict]:
        return [payload for topic, _, payload in self.messages if topic.endswith("/results")]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def first_occurrences(ids: list) -> list:
    return list(dict.fromkeys(ids))


def mqtt_device(tmp_path, broker: Broker, name: str = "lab-1", **mqtt_values) -> Device:
    return Device(tmp_path / name, device_id=name, mqtt={"broker": broker.url, **mqtt_values})


def test_each_capture_is_published_with_its_sample_and_a_retained_status(tmp_path, broker):
    listener = Listener(broker)
    device = mqtt_device(tmp_path, broker, thumbnail=True)
    try:
        stored = [device.client.post("/api/classify", json={"sample_id": "S-7"}).json() for _ in range(2)]
        def samples():
            return [p for t, _, p in listener.messages if t == "leukoscreen/lab-1/samples"]
        wait_for(lambda: len(samples()) == 2, what="two results and their sample summaries arriving")
        results = listener.results()
        assert [r["capture_id"] for r in results] == [s["id"] for s in stored]
        assert results[0]["record"]["decision"] == stored[0]["decision"] and results[0]["device"] == "lab-1"
        assert results[0]["image_sha256"] == stored[0]["image_sha256"] and "Research use only" in results[0]["notice"]
        assert len(results[0]["thumbnail_jpeg"]) > 1000 and len({r["id"] for r in results}) == 2
        assert [s["summary"]["captures"] for s in samples()] == [1, 2]
        assert samples()[1]["summary"]["sample_id"] == "S-7"
        status = [p for t, _, p in listener.messages if t == "leukoscreen/lab-1/status"]
        assert status[0]["state"] == "online" and status[0]["bundle"] == device.daemon.models.deciding.title
        outbox = device.client.get("/api/status").json()["outbox"]
        assert outbox["connected"] and outbox["waiting"] == 0 and outbox["last_sent"]
        assert outbox["topics"] == "leukoscreen/lab-1/#"
        assert device.daemon.reload()  # a reloaded bundle is announced on the retained status
        wait_for(lambda: len([t for t, _, _ in listener.messages if t.endswith("/status")]) == 2, 10,
                 "the status published again after a reload")
    finally:
        device.close()
        listener.close()
    retained = Listener(broker, "late-listener")  # a new subscriber is told the device is offline
    try:
        wait_for(lambda: retained.messages, 10, "the retained status")
        assert retained.messages[-1][:2] == ("leukoscreen/lab-1/status", True)
        assert retained.messages[-1][2]["state"] == "offline"
    finally:
        retained.close()


def test_a_broker_outage_of_20_captures_loses_nothing_and_keeps_the_order(tmp_path, broker):
    listener = Listener(broker)
    device = mqtt_device(tmp_path, broker)
    try:
        device.client.post("/api/classify", json={"sample_id": "before"})
        wait_for(lambda: len(listener.results()) == 1, what="the first result")
        broker.stop()
        wait_for(lambda: not device.client.get("/api/status").json()["outbox"]["connected"], 15,
                 "the device noticing the outage")
        during = [device.client.post("/api/classify", json={"sample_id": "outage"}).json()["id"] for _ in range(20)]
        outbox = device.client.get("/api/status").json()["outbox"]
        assert outbox["waiting"] == 40 and not outbox["connected"]  # 20 results and 20 sample summaries
        broker.start()
        wait_for(lambda: len(first_occurrences([r["id"] for r in listener.results()])) == 21, 60,
                 "all 21 results arriving")
        ids = first_occurrences([r["capture_id"] for r in listener.results()])
        assert ids[1:] == during  # every one, in the order they were stored
        wait_for(lambda: device.client.get("/api/status").json()["outbox"]["waiting"] == 0, 10, "an empty outbox")
    finally:
        device.close()
        listener.close()


def test_what_the_broker_refuses_stays_in_the_outbox_and_the_status_says_why(tmp_path):
    """MQTT 5: a message the broker's access list refuses is acknowledged as "Not authorized", not taken; it
    must not count as sent."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (README: apt install mosquitto)")
    folder = tmp_path / "broker"
    folder.mkdir()
    (folder / "acl").write_text("pattern write leukoscreen/%u/#\n")  # each user writes its own topics only
    (folder / "passwords").write_text("u1:secret\n")
    subprocess.run([str(Path(MOSQUITTO).parent.parent / "bin" / "mosquitto_passwd"), "-U", str(folder / "passwords")],
                   check=True)
    broker = Broker(folder, f"allow_anonymous false\npassword_file {folder}/passwords\nacl_file {folder}/acl\n")
    broker.start()
    device = mqtt_device(tmp_path, broker, "clinic-x", username="u1", password="secret")
    try:
        device.client.post("/api/classify", json={"sample_id": "S-1"})
        wait_for(lambda: "Not authorized" in device.client.get("/api/status").json()["outbox"]["problem"], 20,
                 "the refusal shown on the status")
        outbox = device.client.get("/api/status").json()["outbox"]
        assert outbox["waiting"] == 2 and "access list" in outbox["problem"]
    finally:
        device.close()
        broker.stop()


def test_sending_goes_on_when_the_store_cannot_mark_what_was_sent(tmp_path, broker, monkeypatch):
    """A full disk: the acknowledgements cannot be written, yet each message is sent once, and they are
    marked when the disk allows."""
    listener = Listener(broker)
    device = mqtt_device(tmp_path, broker)
    store, full = device.daemon.store, [True]
    mark_sent = store.mark_sent

    def failing(ids):
        if full[0]:
            raise sqlite3.OperationalError("database or disk is full")
        return mark_sent(ids)
    monkeypatch.setattr(store, "mark_sent", failing)
    try:
        for _ in range(3):
            device.client.post("/api/classify", json={"sample_id": "S-1"})
        wait_for(lambda: len(listener.results()) == 3, 20, "three results")
        wait_for(lambda: "cannot be marked" in device.client.get("/api/status").json()["outbox"]["problem"], 10,
                 "the problem shown")
        time.sleep(1)
        assert len(listener.results()) == 3  # not sent again and again
        full[0] = False
        device.daemon.sender.wake()
        wait_for(lambda: device.client.get("/api/status").json()["outbox"]["waiting"] == 0, 10, "an empty outbox")
        assert device.client.get("/api/status").json()["outbox"]["problem"] == ""
    finally:
        device.close()
        listener.close()


def test_a_message_over_the_brokers_size_limit_is_named(tmp_path, monkeypatch):
    """Mosquitto closes the connection on a message over its message_size_limit; the oldest message then never
    goes: the status says why instead of "connected"."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (README: apt install mosquitto)")
    import leukoscreen.edge.mqtt_sender as sender
    monkeypatch.setattr(sender, "ACK_TIMEOUT_S", 1.0)
    monkeypatch.setattr(sender, "RETRY_MAX_S", 1.0)
    broker = Broker(tmp_path / "broker", "allow_anonymous true\nmessage_size_limit 1000\n")
    broker.start()
    device = mqtt_device(tmp_path, broker, thumbnail=True)
    try:
        device.client.post("/api/classify", json={"sample_id": "S-1"})
        wait_for(lambda: "message_size_limit" in device.client.get("/api/status").json()["outbox"]["problem"], 30,
                 "the size limit named")
        assert device.client.get("/api/status").json()["outbox"]["waiting"] == 2
    finally:
        device.close()
        broker.stop()


def test_two_devices_with_one_name_are_told_apart(tmp_path, broker):
    """Every Raspberry Pi is called raspberrypi: two devices with one device_id take each other's session."""
    twins = [mqtt_device(tmp_path / str(n), broker, "raspberrypi") for n in (1, 2)]
    try:
        wait_for(lambda: any("own device_id" in t.client.get("/api/status").json()["outbox"]["problem"]
                             for t in twins), 20, "the clash named")
    finally:
        for twin in twins:
            twin.close()


def test_a_device_killed_mid_send_loses_nothing(tmp_path, broker):
    """SIGKILL of `leukoscreen serve` while 20 captures are published and unacknowledged (the broker is
    paused): after the restart all 20 arrive; some may arrive twice, none is missing or out of order."""
    listener = Listener(broker)
    port, state = free_port(), tmp_path / "state"
    config = tmp_path / "device.toml"
    config.write_text(f'state_dir = "{state}"\nport = {port}\nmin_free_mb = 0\ndevice_id = "lab-9"\n'
                      f'[mqtt]\nbroker = "{broker.url}"\n')
    command = [sys.executable, "-m", "leukoscreen.cli", "serve", "--config", str(config)]
    log = open(tmp_path / "serve.log", "a")

    def start():
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=REPO)

        def answering():
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=5).json()["outbox"]["connected"]
            except httpx.TransportError:
                return False
        wait_for(answering, 90, "the device starting and connecting")
        return process

    device = start()
    try:
        broker.process.send_signal(signal.SIGSTOP)  # connected, but no acknowledgements come
        for _ in range(20):
            assert httpx.post(f"http://127.0.0.1:{port}/api/classify", json={"sample_id": "kill"},
                              timeout=60).status_code == 200
        time.sleep(0.5)
        device.kill()
        device.wait(10)
        with sqlite3.connect(state / "results.sqlite3") as db:
            unsent = db.execute("SELECT COUNT(*) FROM outbox WHERE sent IS NULL").fetchone()[0]
        assert unsent == 40  # nothing was acknowledged before the kill
        broker.process.send_signal(signal.SIGCONT)
        device = start()
        wait_for(lambda: len(first_occurrences([r["id"] for r in listener.results()])) == 20, 60,
                 "all 20 results after the restart")
        ids = [r["capture_id"] for r in listener.results()]
        assert first_occurrences(ids) == list(range(1, 21))
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/api/status").json()["outbox"]["waiting"] == 0, 10,
                 "an empty outbox")
    finally:
        device.terminate()
        device.wait(30)
        listener.close()
        log.close()


def test_the_collector_keeps_two_devices_once_each(tmp_path, broker):
    store = CollectorStore(f"sqlite:///{tmp_path / 'collector.sqlite3'}")
    collector = Collector(broker.url, store, client_id="test-collector")
    collector.start()
    wait_for(collector.connected.is_set, 10, "the collector connecting")
    devices = [mqtt_device(tmp_path, broker, name) for name in ("clinic-a", "clinic-b")]
    try:
        for device in devices:
            for _ in range(3):
                device.client.post("/api/classify", json={"sample_id": "S-1"})
        wait_for(lambda: sum(d["results"] for d in store.device_list()) == 6, 30, "six results in the collector")
        # A repeat (at-least-once delivery) and a message no device sends change nothing.
        with sqlite3.connect(devices[0].daemon.store.root / "results.sqlite3") as db:
            topic, payload = db.execute("SELECT topic, payload FROM outbox ORDER BY id LIMIT 1").fetchone()
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-repeat")
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        for message in (payload, b"not json", json.dumps({"id": "x"}), json.dumps([1])):
            publisher.publish(topic, message, qos=1).wait_for_publish(5)
        publisher.publish("leukoscreen/a/b/c", b"{}", qos=1).wait_for_publish(5)
        wait_for(lambda: collector.dropped == 3 and collector.received >= 18, 10,  # 2 status, 6 + 6, 4 sent here
                 "every message and the repeats being handled")
        publisher.disconnect()
        publisher.loop_stop()
        listed = {d["device"]: d for d in store.device_list()}
        assert set(listed) == {"clinic-a", "clinic-b"} and all(d["results"] == 3 for d in listed.values())
        assert all(d["state"] == "online" for d in listed.values())
        samples = store.sample_list()
        assert sorted((s["device"], s["sample_id"], s["captures"]) for s in samples) == [
            ("clinic-a", "S-1", 3), ("clinic-b", "S-1", 3)]
        assert len(store.result_list("clinic-a", "S-1")) == 3
        from fastapi.testclient import TestClient
        page = TestClient(collector_app(store, collector), base_url="http://127.0.0.1").get("/")
        assert page.status_code == 200 and "clinic-a" in page.text and "Research use only" in page.text
        assert page.text.count("<tr>") == 2 + 2 + 2  # two header rows, two devices, two samples
        for device in devices:
            device.close()
        wait_for(lambda: {d["state"] for d in store.device_list()} == {"offline"}, 10, "both devices offline")
    finally:
        for device in devices:
            device.close()
        collector.stop()


def test_a_message_the_database_did_not_take_is_received_again(tmp_path, broker, monkeypatch):
    from sqlalchemy.exc import OperationalError
    store = CollectorStore(f"sqlite:///{tmp_path / 'collector.sqlite3'}")
    add, failures = store.add, []

    def failing_twice(*values):
        if len(failures) < 2:
            failures.append(values)
            raise OperationalError("INSERT", {}, Exception("database is locked"))
        return add(*values)
    monkeypatch.setattr(store, "add", failing_twice)
    collector = Collector(broker.url, store, client_id="test-retry")
    collector.retry_s = 0.2
    collector.start()
    try:
        wait_for(collector.connected.is_set, 10, "the collector connecting")
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        publisher.publish("leukoscreen/lab-3/status", b'{"state": "online", "device": "lab-3"}', qos=1
                          ).wait_for_publish(5)
        publisher.disconnect()
        publisher.loop_stop()
        wait_for(lambda: store.device_list(), 20, "the message stored after two database errors")
        assert len(failures) == 2 and store.device_list()[0]["state"] == "online" and collector.stored == 1
    finally:
        collector.stop()


def test_the_collector_warns_when_the_broker_forgot_its_session(tmp_path, broker, capsys):
    """A broker restarted without its persistence file has lost the collector's queued messages: say so."""
    collector = Collector(broker.url, CollectorStore(f"sqlite:///{tmp_path / 'c.sqlite3'}"), client_id="test-forget")
    collector.start()
    try:
        wait_for(collector.connected.is_set, 10, "the collector connecting")
        broker.stop()
        for saved in broker.folder.glob("*.db"):
            saved.unlink()
        wait_for(lambda: not collector.connected.is_set(), 10, "the collector noticing")
        broker.start()
        wait_for(collector.connected.is_set, 30, "the collector reconnecting")
        assert "did not keep this collector's session" in capsys.readouterr().err
    finally:
        collector.stop()


def test_the_collector_says_when_it_cannot_reach_the_broker(tmp_path, capsys):
    collector = Collector(f"mqtt://127.0.0.1:{free_port()}", CollectorStore(f"sqlite:///{tmp_path / 'c.sqlite3'}"))
    said = []
    collector.start()
    try:
        wait_for(lambda: said.append(capsys.readouterr().err) or "cannot reach the broker" in "".join(said), 10,
                 "the collector saying so")
    finally:
        collector.stop()


def test_the_collector_escapes_what_devices_send_and_needs_its_token(tmp_path):
    from fastapi.testclient import TestClient
    store = CollectorStore(f"sqlite:///{tmp_path / 'c.sqlite3'}")
    store.add("lab-x", "samples", json.dumps({"id": "1", "device": "lab-x", "summary": {
        "sample_id": "<script>alert(1)</script>", "captures": 2, "decision": "no_blasts", "message": "<b>x</b>",
        "last_time": "2026-12-01T00:00:00+00:00"}}).encode())
    store.add("lab-x", "samples", json.dumps({"id": "2", "device": "lab-x", "summary": {  # an older one is kept out
        "sample_id": "<script>alert(1)</script>", "captures": 1, "decision": "possible_blasts", "message": "old",
        "last_time": "2026-11-30T00:00:00+00:00"}}).encode())
    assert [s["captures"] for s in store.sample_list()] == [2]
    page = TestClient(collector_app(store), base_url="http://127.0.0.1").get("/").text
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    rebound = TestClient(collector_app(store), base_url="http://evil.example")  # DNS rebinding
    assert rebound.get("/api/devices").status_code == 400
    guarded = TestClient(collector_app(store, token="a-long-collector-token", host="0.0.0.0"),
                         base_url="http://collector.example")
    assert guarded.get("/").status_code == 401 and guarded.get("/api/devices").status_code == 401
    assert guarded.get("/", auth=("reviewer", "a-long-collector-token")).status_code == 200
    assert guarded.get("/", auth=("reviewer", "wrong")).status_code == 401
    assert guarded.get("/docs", auth=("reviewer", "a-long-collector-token")).status_code == 404
    for _ in range(5):  # the one wrong above and five more: this address waits a minute, even with the right one
        guarded.get("/api/devices", auth=("reviewer", "guess"))
    assert guarded.get("/", auth=("reviewer", "a-long-collector-token")).status_code == 429
    refuses_what_the_database_cannot_keep(store)


def refuses_what_the_database_cannot_keep(store: CollectorStore):
    """Values PostgreSQL would refuse (over-long, NUL, out-of-range numbers), wrong types, another device's name,
    times from the future, text that cannot be shown, too deep or too large messages: dropped as bad messages,
    in SQLite too, and the page still shows the rest (a message the database can never take must not be
    received again and again)."""
    good = {"id": "r-9", "device": "lab-1", "capture_id": 9, "sample_id": "S-9", "time": "2026-12-01T00:00:00+00:00",
            "record": {"decision": "no_blasts", "message": "m"}}
    for bad in (good | {"sample_id": "x" * 129}, good | {"id": "a\x00b"}, good | {"capture_id": 2**40},
                good | {"record": {"decision": "d" * 21, "message": "m"}}, good | {"capture_id": 3.9},
                good | {"capture_id": " 7 "}, good | {"id": None}, good | {"record": {"decision": {"a": 1},
                                                                                    "message": "m"}},
                good | {"device": "lab-2"}, good | {"time": "2999-01-01T00:00:00+00:00"}, good | {"time": "soon"},
                good | {"sample_id": "\udc80"}, good | {"thumbnail_jpeg": "A" * 2_000_000}):
        with pytest.raises(MessageError):
            store.add("lab-1", "results", json.dumps(bad).encode())
    deep = {"state": "online", "device": "lab-1", "bundle": json.loads("[" * 260 + "]" * 260)}
    for bad in (json.dumps({"state": "on\x00line", "device": "lab-1"}), "[" * 100_000, json.dumps(deep),
                '{"state": "online", "device": "lab-1", "n": NaN}', '{"state": "online", "device": "lab-1", "n": 1e400}',
                json.dumps({"state": "online", "device": "lab-1", "bundle": "\udc80"})):
        with pytest.raises(MessageError):
            store.add("lab-1", "status", bad.encode())
    assert store.add("lab-1", "results", json.dumps(good).encode())
    assert store.device_list() and store.result_list("lab-1", "S-9")
    assert Collector("mqtt://127.0.0.1:1", store).was_connected  # it collected before: a new session is a loss


def postgres_server():
    """A throw-away PostgreSQL cluster on a loopback port (as the postgres user when run as root): its data
    folder, URL and stop command."""
    bin_dir = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
                    if (p / "initdb").exists()), None)
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt install postgresql); the PostgreSQL collector test is skipped")
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    parent = Path(tempfile.mkdtemp(prefix="leukoscreen-pg-"))  # under /tmp: reachable by the postgres user
    parent.chmod(0o755)
    folder = parent / "data"
    folder.mkdir(mode=0o700)
    if run_as:
        shutil.chown(folder, "postgres")
    port = free_port()
    subprocess.run(run_as + [str(bin_dir / "initdb"), "-D", str(folder), "--auth=trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run(run_as + [str(bin_dir / "pg_ctl"), "-D", str(folder), "-w", "-l", str(folder / "log"), "-o",
                             f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    stop = run_as + [str(bin_dir / "pg_ctl"), "-D", str(folder), "-m", "fast", "stop"]
    return folder, f"postgresql://postgres@127.0.0.1:{port}/postgres", stop


def test_the_collector_in_postgresql():
    folder, url, stop = postgres_server()
    try:
        store = CollectorStore(url)
        result = {"id": "r-1", "device": "lab-1", "capture_id": 1, "sample_id": "S-1",
                  "time": "2026-12-01T00:00:00+00:00",
                  "record": {"decision": "no_blasts", "message": "No blasts suggested. Research use only."}}
        assert store.add("lab-1", "results", json.dumps(result).encode())
        assert not store.add("lab-1", "results", json.dumps(result).encode())  # a repeat
        assert store.add("lab-1", "status", b'{"state": "online", "device": "lab-1"}')
        assert [(d["device"], d["state"], d["results"]) for d in store.device_list()] == [("lab-1", "online", 1)]
        summary = {"sample_id": "S-1", "captures": 2, "decision": "no_blasts", "message": "m",
                   "last_time": "2026-12-01T00:00:02+00:00"}
        sample = {"id": "s-1", "device": "lab-1"}
        assert store.add("lab-1", "samples", json.dumps(sample | {"summary": summary}).encode())
        older = summary | {"captures": 1, "decision": "possible_blasts"}  # arrives late: kept out
        assert not store.add("lab-1", "samples", json.dumps(sample | {"summary": older}).encode())
        assert [(s["captures"], s["decision"]) for s in store.sample_list("lab-1")] == [(2, "no_blasts")]
        assert store.engine.dialect.name == "postgresql"
        refuses_what_the_database_cannot_keep(store)
        store.engine.dispose()
    finally:
        subprocess.run(stop, capture_output=True)
        shutil.rmtree(folder.parent, ignore_errors=True)


@pytest.mark.parametrize("values, reason", [
    ({"broker": "http://x"}, "mqtt://HOST"),
    ({"broker": "mqtt://"}, "mqtt://HOST"),
    ({"broker": "mqtt://u:p@host"}, "their own settings"),
    ({"broker": "mqtt://host:99999"}, "Port out of range"),
    ({"broker": "mqtt://broker.clinic", "password": "pw"}, "clear text"),
    ({"broker": "mqtt://localhost", "topic_prefix": "a/b"}, "topic_prefix"),
    ({"broker": "mqtt://localhost", "ca_file": "/nonexistent"}, "no such file"),
    ({"broker": "mqtt://broker..district.example"}, "not a host name"),
    ({"broker": "mqtt://" + "a" * 64 + ".example"}, "not a host name"),
    ({"broker": "mqtt://localhost:0"}, "port 0"),
])
def test_mqtt_settings_are_checked(values, reason):
    with pytest.raises(ConfigError, match=reason):
        parse_config({"mqtt": values})


@pytest.mark.parametrize("values, reason", [
    ({"broker": "mqtt://collector.example", "password": "pw"}, "clear text"),
    ({"ca_file": "/nonexistent/ca.pem"}, "/nonexistent/ca.pem"),
    ({"port": 70000}, "between 1 and 65535"),
])
def test_collect_settings_are_checked(tmp_path, values, reason):
    from leukoscreen.edge.collector import run_collector
    settings = {"broker": "mqtt://127.0.0.1:1", "db": f"sqlite:///{tmp_path / 'c.sqlite3'}", "prefix": "leukoscreen",
                "host": "127.0.0.1", "port": 8091} | values
    with pytest.raises(ValueError, match=reason):
        run_collector(**settings)


def test_device_id_is_checked():
    with pytest.raises(ConfigError, match="device_id"):
        parse_config({"device_id": "lab/1"})
    assert parse_config({}).device_name  # the host name when none is set
