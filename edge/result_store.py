"""The result store: every capture, its image and its result kept safely on the device.

SQLite in WAL mode under the state directory; images are written atomically (temporary file, fsync,
rename) before the database row that names them is committed, so a committed result always has its
image and a crash leaves no partial file. An append-only audit log records every event. Below a
configured free space the store refuses new captures; it never deletes results. One store is shared by
the capture loop and the web server's threads: a lock keeps each operation (and transaction) whole.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import sqlite3
import threading
import uuid
import zipfile
from pathlib import Path

import cv2
import numpy as np

from leukoscreen import RESEARCH_USE_NOTICE, __version__
from leukoscreen.edge.capture_record import CaptureRecord

SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sample_id TEXT NOT NULL REFERENCES samples(id),
    time TEXT NOT NULL, image TEXT NOT NULL, image_sha256 TEXT NOT NULL, decision TEXT NOT NULL,
    message TEXT NOT NULL, blast_score REAL, quality TEXT NOT NULL, result TEXT NOT NULL,
    bundle TEXT NOT NULL, bundle_sha256 TEXT NOT NULL, software_version TEXT NOT NULL,
    exported INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS cells (
    capture_id INTEGER NOT NULL REFERENCES captures(id), idx INTEGER NOT NULL,
    x INTEGER, y INTEGER, w INTEGER, h INTEGER, predicted TEXT, blast_score REAL,
    PRIMARY KEY (capture_id, idx));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, event TEXT NOT NULL, detail TEXT);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"""


EXPORT_COLUMNS = ["id", "sample_id", "time", "decision", "message", "blast_score", "image", "image_sha256",
                  "bundle", "bundle_sha256", "software_version"]
EXPORT_NOTICE = RESEARCH_USE_NOTICE + " Screening aid only, not a diagnosis."


class StoreError(RuntimeError):
    """The store cannot take a capture (disk full, unwritable); the message says what to do."""


def check_sample_id(sample_id: str) -> str:
    """The sample id without surrounding spaces; ValueError for one that cannot be stored."""
    sample_id = sample_id.strip()
    if len(sample_id) > 64 or any(c in sample_id for c in "/\\\0"):
        raise ValueError(f"sample id {sample_id!r}: use up to 64 characters without slashes")
    return sample_id


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes) -> None:
    """Write data to path so that path either does not exist or holds all of data."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


class ResultStore:
    def __init__(self, state_dir: str | Path, min_free_mb: float = 200.0):
        self.root = Path(state_dir)
        self.images = self.root / "images"
        try:
            self.images.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"state directory {self.root} cannot be created ({error.strerror}); "
                             "check the StateDirectory setting and permissions") from error
        self.min_free_mb = min_free_mb
        self.db = sqlite3.connect(self.root / "results.sqlite3", timeout=30, isolation_level=None,
                                  check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.lock = threading.RLock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.executescript(SCHEMA)
        leftovers = list(self.images.glob(".*.tmp"))
        for partial in leftovers:  # an interrupted write: its row was never committed
            partial.unlink()
        self.audit("store_opened", {"removed_partial_files": len(leftovers)})

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def audit(self, event: str, detail: dict | None = None) -> None:
        with self.lock:
            self.db.execute("INSERT INTO audit (time, event, detail) VALUES (?, ?, ?)",
                            (_now(), event, json.dumps(detail or {})))

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 1e6

    def check_space(self) -> None:
        free = self.free_mb()
        if free < self.min_free_mb:
            self.audit("capture_refused_disk_full", {"free_mb": round(free, 1)})
            raise StoreError(f"Storage full: {free:.0f} MB free, {self.min_free_mb:.0f} MB needed. Export and "
                             "archive results, then free space; nothing was deleted.")

    @staticmethod
    def new_sample_id() -> str:
        return dt.datetime.now().strftime("S%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]

    def add(self, record: CaptureRecord, rgb: np.ndarray) -> CaptureRecord:
        """Store the field image (atomically) and then its record (one transaction). Returns the record
        with its capture id and sample id (a new one when it had none)."""
        self.check_space()
        record = record.model_copy(update={"sample_id": check_sample_id(record.sample_id) or self.new_sample_id()})
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise StoreError("the captured image could not be encoded")
        data = encoded.tobytes()
        digest = hashlib.sha256(data).hexdigest()
        time = _now()
        name = f"{time[:10]}_{digest[:16]}.png"
        try:
            write_atomically(self.images / name, data)
        except OSError as error:
            raise StoreError(f"the image could not be saved ({error.strerror}); check the storage") from error
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT OR IGNORE INTO samples (id, created) VALUES (?, ?)", (record.sample_id, time))
            cursor = self.db.execute(
                "INSERT INTO captures (sample_id, time, image, image_sha256, decision, message, blast_score, "
                "quality, result, bundle, bundle_sha256, software_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (record.sample_id, time, name, digest, record.decision, record.message, record.blast_score,
                 record.quality.model_dump_json() if record.quality else "{}",
                 record.model_dump_json(exclude={"capture_id"}), record.bundle, record.bundle_sha256, __version__))
            capture_id = cursor.lastrowid
            self.db.executemany(
                "INSERT INTO cells (capture_id, idx, x, y, w, h, predicted, blast_score) VALUES (?,?,?,?,?,?,?,?)",
                [(capture_id, i, *cell.box, cell.predicted, cell.blast_score) for i, cell in enumerate(record.cells)])
            self.db.execute("INSERT INTO audit (time, event, detail) VALUES (?, ?, ?)",
                            (time, "capture_stored", json.dumps({"capture": capture_id, "sample": record.sample_id,
                                                                 "decision": record.decision})))
        return record.model_copy(update={"capture_id": capture_id})

    @staticmethod
    def record(row: dict) -> CaptureRecord:
        """The record of a stored capture row, as it was stored, with its capture id."""
        return CaptureRecord.model_validate_json(row["result"]).model_copy(update={"capture_id": row["id"]})

    def captures(self, sample_id: str | None = None, since: str | None = None, until: str | None = None,
                 limit: int = 1000) -> list[dict]:
        query, arguments = "SELECT * FROM captures WHERE 1=1", []
        if sample_id:
            query, arguments = query + " AND sample_id = ?", arguments + [sample_id]
        if since:
            query, arguments = query + " AND time >= ?", arguments + [since]
        if until:
            query, arguments = query + " AND time < ?", arguments + [until]
        with self.lock:
            rows = self.db.execute(query + " ORDER BY id DESC LIMIT ?", arguments + [limit]).fetchall()
        return [dict(row) for row in rows]

    def capture(self, capture_id: int) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT * FROM captures WHERE id = ?", (capture_id,)).fetchone()
        return dict(row) if row else None

    def samples(self, limit: int = 200) -> list[dict]:
        """Samples, newest first, with their number of captures, last capture time and decisions."""
        with self.lock:
            rows = self.db.execute(
                "SELECT g.*, last.image AS last_image FROM (SELECT s.id, s.created, COUNT(c.id) AS captures, "
                "MAX(c.time) AS last_time, GROUP_CONCAT(DISTINCT c.decision) AS decisions, MAX(c.id) AS last_capture "
                "FROM samples s LEFT JOIN captures c ON c.sample_id = s.id GROUP BY s.id) g "
                "LEFT JOIN captures last ON last.id = g.last_capture ORDER BY g.last_capture DESC LIMIT ?",
                (limit,)).fetchall()
        return [dict(row) | {"decisions": sorted(row["decisions"].split(",")) if row["decisions"] else []}
                for row in rows]

    def image_path(self, name: str) -> Path:
        """The stored image of that name; never a path outside the image folder."""
        path = (self.images / name).resolve()
        if path.parent != self.images.resolve() or not path.is_file():
            raise FileNotFoundError(f"no stored image named {name!r}")
        return path

    @staticmethod
    def tables(rows: list[dict]) -> tuple[str, str]:
        """The captures as CSV text and as JSON text, each carrying the research-use notice."""
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow(EXPORT_COLUMNS + ["notice"])
        writer.writerows([[row[c] for c in EXPORT_COLUMNS] + [EXPORT_NOTICE] for row in rows])
        records = [{**{c: row[c] for c in EXPORT_COLUMNS}, "result": json.loads(row["result"])} for row in rows]
        return table.getvalue(), json.dumps({"notice": EXPORT_NOTICE, "captures": records}, indent=2)

    def export(self, out_zip: Path, sample_id: str | None = None, since: str | None = None,
               until: str | None = None) -> int:
        """Write a zip (results.csv, results.json, images/, NOTICE.txt) of the chosen captures; returns
        how many. The captures are marked exported; nothing is deleted."""
        rows = self.captures(sample_id, since, until, limit=1_000_000)
        csv_text, json_text = self.tables(rows)
        temporary = out_zip.with_name(f".{out_zip.name}.{uuid.uuid4().hex}.tmp")
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("NOTICE.txt", EXPORT_NOTICE + "\n")
            archive.writestr("results.csv", csv_text)
            archive.writestr("results.json", json_text)
            for row in rows:
                archive.write(self.images / row["image"], f"images/{row['image']}")
        os.replace(temporary, out_zip)
        with self.lock, self.db:
            self.db.executemany("UPDATE captures SET exported = 1 WHERE id = ?", [(row["id"],) for row in rows])
        self.audit("exported", {"captures": len(rows), "file": str(out_zip)})
        return len(rows)

    def integrity_problems(self) -> list[str]:
        """Database integrity check plus every committed capture's image present and unaltered."""
        with self.lock:
            problems = [r[0] for r in self.db.execute("PRAGMA integrity_check") if r[0] != "ok"]
            rows = self.db.execute("SELECT id, image, image_sha256 FROM captures").fetchall()
        for row in rows:
            path = self.images / row["image"]
            if not path.is_file():
                problems.append(f"capture {row['id']}: image {row['image']} is missing")
            elif hashlib.sha256(path.read_bytes()).hexdigest() != row["image_sha256"]:
                problems.append(f"capture {row['id']}: image {row['image']} does not match its sha256")
        return problems
