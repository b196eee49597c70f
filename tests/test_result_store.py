import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from leukoscreen.edge.result_store import ResultStore, StoreError

RESULT = {"decision": "no_blasts", "message": "No blasts suggested. Research use only.", "blast_score": 0.1,
          "quality": {"focus": 50.0}, "cells": [{"box": [1, 2, 3, 4], "predicted": None, "blast_score": None}]}


def frame(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def test_capture_is_stored_with_image_cells_and_audit(tmp_path):
    store = ResultStore(tmp_path, min_free_mb=0)
    stored = store.add_capture("S1", frame(), RESULT, "model 1", "abc")
    assert stored.image.is_file() and stored.sample_id == "S1"
    rows = store.captures("S1")
    assert len(rows) == 1 and rows[0]["decision"] == "no_blasts" and json.loads(rows[0]["result"]) == RESULT
    assert store.db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 1
    events = [r[0] for r in store.db.execute("SELECT event FROM audit")]
    assert events == ["store_opened", "capture_stored"]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("DELETE FROM audit")
    assert store.integrity_problems() == []
    generated = store.add_capture("", frame(1), RESULT, "model 1", "abc")
    assert generated.sample_id.startswith("S")


def test_export_zip_holds_results_images_and_notice(tmp_path):
    store = ResultStore(tmp_path / "state", min_free_mb=0)
    for seed in range(3):
        store.add_capture("S1" if seed < 2 else "S2", frame(seed), RESULT, "model 1", "abc")
    assert store.export(tmp_path / "s1.zip", sample_id="S1") == 2
    with zipfile.ZipFile(tmp_path / "s1.zip") as archive:
        names = archive.namelist()
        assert "NOTICE.txt" in names and "results.csv" in names and "results.json" in names
        assert sum(n.startswith("images/") for n in names) == 2
        assert "Research use only" in archive.read("NOTICE.txt").decode()
    exported = {r["sample_id"]: r["exported"] for r in store.captures()}
    assert exported == {"S1": 1, "S2": 0}
    store.close()
    from leukoscreen.cli import main
    assert main(["export", "--state-dir", str(tmp_path / "state"), "--since", "2000-01-01",
                 "--out", str(tmp_path / "all.zip")]) == 0
    with zipfile.ZipFile(tmp_path / "all.zip") as archive:
        assert sum(n.startswith("images/") for n in archive.namelist()) == 3


def test_full_disk_refuses_capture_and_deletes_nothing(tmp_path):
    store = ResultStore(tmp_path, min_free_mb=0)
    store.add_capture("S1", frame(), RESULT, "m", "h")
    store.min_free_mb = 1e12
    with pytest.raises(StoreError, match="Storage full.*nothing was deleted"):
        store.add_capture("S1", frame(1), RESULT, "m", "h")
    assert len(store.captures()) == 1 and store.integrity_problems() == []


def test_image_paths_never_leave_the_image_folder(tmp_path):
    store = ResultStore(tmp_path, min_free_mb=0)
    (tmp_path / "secret.txt").write_text("x")
    for name in ("../secret.txt", "/etc/passwd", "../../results.sqlite3"):
        with pytest.raises(FileNotFoundError):
            store.image_path(name)
    with pytest.raises(ValueError, match="sample id"):
        store.add_capture("../../evil", frame(), RESULT, "m", "h")


WRITER = """
import sys, numpy as np
from leukoscreen.edge.result_store import ResultStore
store = ResultStore(sys.argv[1], min_free_mb=0)
result = {"decision": "no_blasts", "message": "m", "quality": {}, "cells": [{"box": [0, 0, 5, 5]}] * 20}
rng = np.random.default_rng(int(sys.argv[2]))
print("ready", flush=True)
while True:
    store.add_capture("S", rng.integers(0, 255, (300, 300, 3), dtype=np.uint8), result, "m", "h")
"""


def test_sigkill_during_captures_never_damages_results(tmp_path):
    """Kill a writer with SIGKILL mid-capture many times; every committed result keeps its image."""
    state = tmp_path / "state"
    rng = np.random.default_rng(0)
    for round_number in range(12):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(state), str(round_number)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    store = ResultStore(state, min_free_mb=0)  # reopening removes partial temporary files
    assert store.integrity_problems() == []
    assert len(store.captures()) > 12
    assert not list((state / "images").glob(".*.tmp"))
    committed = {r["image"] for r in store.captures(limit=10_000)}
    on_disk = {p.name for p in (state / "images").glob("*.png")}
    assert committed <= on_disk  # images without a row may exist (killed before commit), never the reverse
