import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from leukoscreen.edge.capture_record import CaptureRecord, CellRecord
from leukoscreen.edge.quality import QualityReport
from leukoscreen.edge.result_store import ResultStore, StoreError

RESULT = CaptureRecord(decision="no_blasts", message="No blasts suggested. Research use only.", blast_score=0.1,
                       quality=QualityReport(focus=50.0, dark_fraction=0, clipped_fraction=0, stain_fraction=0.1,
                                             cells=1), cells=(CellRecord(box=(1, 2, 3, 4)),), bundle="model 1",
                       bundle_sha256="abc")


def record(sample_id: str) -> CaptureRecord:
    return RESULT.model_copy(update={"sample_id": sample_id})


def frame(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)


def test_capture_is_stored_with_image_cells_and_audit(tmp_path):
    store = ResultStore(tmp_path, min_free_mb=0)
    stored = store.add(record("S1"), frame())
    rows = store.captures("S1")
    assert store.image_path(rows[0]["image"]).is_file() and stored.sample_id == "S1"
    assert len(rows) == 1 and rows[0]["decision"] == "no_blasts" and store.record(rows[0]) == stored
    assert stored.model_copy(update={"capture_id": None}) == record("S1")  # stored as it was given
    assert store.db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 1
    events = [r[0] for r in store.db.execute("SELECT event FROM audit")]
    assert events == ["store_opened", "capture_stored"]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store.db.execute("DELETE FROM audit")
    assert store.integrity_problems() == []
    generated = store.add(record(""), frame(1))
    assert generated.sample_id.startswith("S")


def test_export_zip_holds_results_images_and_notice(tmp_path):
    store = ResultStore(tmp_path / "state", min_free_mb=0)
    for seed in range(3):
        store.add(record("S1" if seed < 2 else "S2"), frame(seed))
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


def test_an_export_holds_each_image_once_and_lists_a_missing_one(tmp_path):
    store = ResultStore(tmp_path / "state", min_free_mb=0)
    for seed in (0, 0, 1):  # the same frame twice: one stored image, two results
        store.add(record("S1"), frame(seed))
    images = sorted({row["image"] for row in store.captures("S1")})
    assert len(images) == 2
    lost = images[0]
    os.remove(store.image_path(lost))
    assert store.export(tmp_path / "s1.zip", sample_id="S1") == 3
    with zipfile.ZipFile(tmp_path / "s1.zip") as archive:
        names = archive.namelist()
        assert len(names) == len(set(names))
        assert sum(n.startswith("images/") for n in names) == 1 and f"images/{lost}" not in names
        assert lost in archive.read("MISSING-IMAGES.txt").decode()
        assert archive.read("results.csv").decode().count("S1") == 3


def test_full_disk_refuses_capture_and_deletes_nothing(tmp_path):
    store = ResultStore(tmp_path, min_free_mb=0)
    store.add(record("S1"), frame())
    store.min_free_mb = 1e12
    with pytest.raises(StoreError, match="Storage full.*nothing was deleted"):
        store.add(record("S1"), frame(1))
    assert len(store.captures()) == 1 and store.integrity_problems() == []


def test_image_paths_never_leave_the_image_folder(tmp_path):
    store = ResultStore(tmp_path, min_free_mb=0)
    (tmp_path / "secret.txt").write_text("x")
    for name in ("../secret.txt", "/etc/passwd", "../../results.sqlite3"):
        with pytest.raises(FileNotFoundError):
            store.image_path(name)
    with pytest.raises(ValueError, match="sample id"):
        store.add(record("../../evil"), frame())


WRITER = """
import sys, numpy as np
from leukoscreen.edge.capture_record import CaptureRecord, CellRecord
from leukoscreen.edge.result_store import ResultStore
store = ResultStore(sys.argv[1], min_free_mb=0)
result = CaptureRecord(decision="no_blasts", message="m", cells=[CellRecord(box=(0, 0, 5, 5))] * 20, sample_id="S")
rng = np.random.default_rng(int(sys.argv[2]))
print("ready", flush=True)
while True:
    store.add(result, rng.integers(0, 255, (300, 300, 3), dtype=np.uint8))
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
