"""Faults at each step of a capture, an export and a bundle reload: a full disk (injected, and a real small
disk where this machine allows mounting one) and SIGKILL. No result is lost, no row is corrupt, nothing half
written stays behind, and the device starts again."""
from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from leukoscreen.edge.capture_record import CaptureRecord
from leukoscreen.edge.result_store import ResultStore, StoreError

from conftest import Device

RECORD = CaptureRecord(decision="no_blasts", message="No blasts suggested. Research use only.", sample_id="S")


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (80, 80, 3), dtype=np.uint8)


def leftovers(root) -> list[str]:
    return [p.name for p in (root / "images").glob(".*.tmp")] + [p.name for p in root.glob(".export-*")]


class FailingDatabase:
    """The store's SQLite connection, failing like a full disk on a chosen statement."""

    def __init__(self, db, statement: str):
        self.db, self.statement = db, statement

    def __getattr__(self, name):
        return getattr(self.db, name)

    def __enter__(self):
        return self.db.__enter__()

    def __exit__(self, *exc):
        return self.db.__exit__(*exc)

    def execute(self, sql, *args):
        if sql.startswith(self.statement):
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("step", ["image write", "image rename", "capture row", "audit row"])
def test_a_full_disk_at_each_step_of_a_capture_loses_nothing(tmp_path, monkeypatch, step):
    import leukoscreen.edge.result_store as result_store
    store = ResultStore(tmp_path, min_free_mb=0)
    kept = store.add(RECORD, frame(1))
    if step == "image write":
        monkeypatch.setattr(result_store.os, "fsync", disk_full)
    elif step == "image rename":
        monkeypatch.setattr(result_store.os, "replace", disk_full)
    else:
        store.db = FailingDatabase(store.db, "INSERT INTO captures" if step == "capture row" else "INSERT INTO audit")
    with pytest.raises((StoreError, sqlite3.Error)):
        store.add(RECORD, frame(2))
    monkeypatch.undo()
    store.db = getattr(store.db, "db", store.db)
    assert [row["id"] for row in store.captures()] == [kept.capture_id]  # the transaction was all or nothing
    assert store.integrity_problems() == [] and leftovers(tmp_path) == []
    store.close()
    again = ResultStore(tmp_path, min_free_mb=0)  # and it opens again
    assert again.add(RECORD, frame(3)).capture_id > kept.capture_id


@pytest.mark.parametrize("step", ["zip", "marking"])
def test_a_full_disk_during_an_export(tmp_path, monkeypatch, step):
    import zipfile
    store = ResultStore(tmp_path / "state", min_free_mb=0)
    store.add(RECORD, frame())
    out = tmp_path / "out.zip"
    if step == "zip":
        monkeypatch.setattr(zipfile.ZipFile, "write", disk_full)
        with pytest.raises(OSError, match="No space"):
            store.export(out)
        assert not out.exists() and not list(tmp_path.glob(".out.zip.*"))
        assert [row["exported"] for row in store.captures()] == [0]  # nothing marked that was not sent
    else:
        store.db = FailingDatabase(store.db, "INSERT INTO audit")
        assert store.export(out) == 1 and zipfile.ZipFile(out).testzip() is None  # the zip is whole


KILLER = """
import os, signal, sys, zipfile, numpy as np
import leukoscreen.edge.result_store as result_store
from leukoscreen.edge.capture_record import CaptureRecord
store = result_store.ResultStore(sys.argv[1], min_free_mb=0)
step = sys.argv[2]
record = CaptureRecord(decision="no_blasts", message="m", sample_id="S")

def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

class KillingDatabase:
    def __init__(self, db): self.db = db
    def __getattr__(self, name): return getattr(self.db, name)
    def __enter__(self): return self.db.__enter__()
    def __exit__(self, *exc): return self.db.__exit__(*exc)
    def execute(self, sql, *args):
        if sql.startswith("INSERT INTO audit (time, event, detail) VALUES (?, ?, ?)") and "capture_stored" in args[0]:
            kill()
        return self.db.execute(sql, *args)

if step == "image written":
    result_store.os.replace = kill
elif step == "image renamed":
    result_store._fsync_directory = kill
elif step == "in the transaction":
    store.db = KillingDatabase(store.db)
elif step == "export zip":
    zipfile.ZipFile.write = kill
elif step == "export marking":
    store.db = KillingDatabase(store.db)
    real = store.db.executemany
    store.db.executemany = lambda *a: kill()
if step.startswith("export"):
    folder = store.root / ".export-interrupted"
    folder.mkdir()
    store.export(folder / "export.zip")
else:
    store.add(record, np.zeros((60, 60, 3), np.uint8))
"""


@pytest.mark.parametrize("step", ["image written", "image renamed", "in the transaction", "export zip",
                                  "export marking"])
def test_sigkill_at_each_step_leaves_the_store_whole(tmp_path, step):
    store = ResultStore(tmp_path, min_free_mb=0)
    before = [store.add(RECORD, frame(seed)).capture_id for seed in range(3)]
    store.close()
    killed = subprocess.run([sys.executable, "-c", KILLER, str(tmp_path), step], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    again = ResultStore(tmp_path, min_free_mb=0)  # opening cleans what the crash left half done
    assert again.integrity_problems() == [] and leftovers(tmp_path) == []
    assert [row["id"] for row in again.captures()][::-1] == before  # killed before its commit: not stored


def test_a_daemon_killed_while_reloading_starts_again(tmp_path):
    """SIGKILL while the bundles load again (SIGHUP): the next start has every result and a working model."""
    import signal
    import time

    from leukoscreen.edge.screening import DEFAULT_BUNDLE
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    config = tmp_path / "c.toml"
    config.write_text(f'bundle = "{bundle}"\nstate_dir = "{tmp_path / "s"}"\nport = 0\nmin_free_mb = 0\n')
    first = ResultStore(tmp_path / "s", min_free_mb=0)
    first.add(RECORD, frame())
    first.close()
    process = subprocess.Popen([sys.executable, "-m", "leukoscreen.cli", "serve", "--config", str(config)],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    while b"LeukoScreen device" not in process.stdout.readline():  # ready (the LCD's lines come first)
        assert process.poll() is None
    for _ in range(5):  # reloads in quick succession, killed during one of them
        process.send_signal(signal.SIGHUP)
        time.sleep(0.05)
    process.kill()
    process.wait(timeout=30)
    device = Device(tmp_path / "again", bundle=str(bundle), state_dir=str(tmp_path / "s"))
    try:
        assert len(device.daemon.store.captures()) == 1 and device.daemon.store.integrity_problems() == []
        assert device.client.post("/api/classify", json={}).status_code == 200
    finally:
        device.close()


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB file system (tmpfs) to fill, where this machine lets the tests mount one (as root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"no small disk can be mounted here ({mounted.stderr.decode().strip()}); the injected "
                    "faults above still cover every step")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def fill(disk) -> None:
    with open(disk / "filler", "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass


def test_a_really_full_disk_export_gives_507_and_the_device_starts_read_only(small_disk, tmp_path):
    device = Device(tmp_path, state_dir=str(small_disk / "state"), min_free_mb=1)
    try:
        for _ in range(2):
            assert device.client.post("/api/classify", json={"sample_id": "F"}).status_code == 200
        fill(small_disk)
        answer = device.client.post("/api/export", json={"format": "zip"})
        assert answer.status_code == 507 and "free some space" in answer.json()["detail"]
        assert leftovers(small_disk / "state") == []
        refused = device.client.post("/api/classify", json={"sample_id": "F"})
        assert refused.status_code == 503 and "Storage full" in refused.json()["message"]
    finally:
        device.close()
    again = Device(tmp_path / "restart", state_dir=str(small_disk / "state"), min_free_mb=0)
    try:  # the daemon starts, read-only, and says so
        assert again.daemon.store.read_only.startswith("Storage full")
        status = again.client.get("/api/status").json()  # before anyone presses the button
        assert status["message"].startswith("Storage full")
        assert len(again.client.get("/api/results").json()["captures"]) == 2
        assert again.client.post("/api/export", json={"format": "csv"}).status_code == 200
        refused = again.client.post("/api/classify", json={})
        assert refused.status_code == 503 and "no new capture is taken until space is freed" in refused.json()["message"]
        assert leftovers(small_disk / "state") == []
    finally:
        again.close()
    os.remove(small_disk / "filler")
