"""The result store: every capture, its image and its result kept safely on the device.

SQLite in WAL mode under the state directory; images are written atomically (temporary file, fsync,
rename) before the database row that names them is committed, so a committed result always has its
image and a crash leaves no partial file. An append-only audit log records every event. Below a
configured free space the store refuses new captures; it never deletes results. One store is shared by
the capture loop and the web server's threads: a lock keeps each operation (and transaction) whole.

The outbox: when the device sends results over MQTT, each capture's messages are written in the same
transaction as the capture itself, so a stored result is always queued and a queued one always stored; the
sender marks a message sent only once the broker has acknowledged it.
"""
from __future__ import annotations

import csv
import datetime as dt
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sqlite3
import sys
import threading
import unicodedata
import uuid
import zipfile
from pathlib import Path
from typing import Callable, Iterable

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
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload TEXT NOT NULL, created TEXT NOT NULL,
    sent TEXT);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (id) WHERE sent IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent);  -- the last send, and the clean-up of old ones
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


class StoreError(OSError):
    """The store cannot take a capture (disk full, unwritable); the message says what to do."""


# Sample ids: letters and digits of any script, and - _ . : and spaces inside; at most 64 characters.
SAMPLE_ID = re.compile(r"[^\W_](?:[\w\-.: ]{0,62}[^\W_])?|")
IMAGE_NAME = re.compile(r"\d{4}-\d{2}-\d{2}_[0-9a-f]{16}\.png")
SAMPLE_ID_RULE = ("up to 64 letters or digits (any script), with - _ . : or spaces between them; no slashes, "
                  "line breaks or symbols")


def check_sample_id(sample_id: str) -> str:
    """The sample id in Unicode NFKC form (full-width "Ｓ-１２" is "S-12", a decomposed accent composed) without
    surrounding spaces (empty: the store makes one); ValueError naming the rule for one that does not follow
    it. The one check of sample ids, for the web, the API and the store."""
    sample_id = unicodedata.normalize("NFKC", sample_id).strip()
    if not SAMPLE_ID.fullmatch(sample_id):
        raise ValueError(f"sample id {sample_id[:80]!r}: use {SAMPLE_ID_RULE}")
    return sample_id


def utc_time(text: str) -> str:
    """An ISO date or time ("2026-11-01", "2026-11-01T08:30", "...+03:30") as the store writes times (UTC,
    milliseconds), so that it can be compared with them; a time without an offset is taken as UTC. ValueError
    for text that is not an ISO date or time."""
    try:
        moment = dt.datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return moment.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds")
    except (TypeError, ValueError, OverflowError) as error:  # OverflowError: beyond year 1-9999 in UTC
        raise ValueError(f"{text!r} is not an ISO date or time; write e.g. 2026-11-01 or 2026-11-01T08:30") from error


def is_disk_full(error: BaseException) -> bool:
    return getattr(error, "errno", None) == errno.ENOSPC or "disk is full" in str(error)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(path: Path, data: bytes | Iterable[bytes]) -> None:
    """Write data (bytes, or pieces of it) to path so that path either does not exist or holds all of data; a
    failed write leaves nothing behind."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "wb") as handle:
            for piece in [data] if isinstance(data, bytes) else data:
                handle.write(piece)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


OutboxMessages = Callable[[dict, list[dict], np.ndarray], list[tuple[str, str]]]
OUTBOX_KEEP_DAYS = 7  # sent messages are kept this long (for a look at what went out), then removed


class ResultStore:
    def __init__(self, state_dir: str | Path, min_free_mb: float = 200.0, messages: OutboxMessages | None = None):
        """`messages`: (the capture's stored row, its sample's stored rows, the image) -> the (topic, payload)
        pairs to put in the outbox with each capture; None: no outbox."""
        self.root = Path(state_dir)
        self.messages = messages
        self.images = self.root / "images"
        try:
            self.images.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StoreError(f"state directory {self.root} cannot be created ({error.strerror}); "
                             "check the StateDirectory setting and permissions") from error
        self.min_free_mb = min_free_mb
        self.lock = threading.RLock()
        self.read_only = ""     # why the store takes no captures (the disk was full when it was opened)
        leftovers = list(self.images.glob(".*.tmp"))
        for partial in leftovers:  # an interrupted write: its row was never committed
            partial.unlink()
        for export in self.root.glob(".export-*"):  # an export interrupted by a crash
            shutil.rmtree(export, ignore_errors=True)
        try:
            self.db = sqlite3.connect(self.root / "results.sqlite3", timeout=30, isolation_level=None,
                                      check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA)
            self.db.execute("INSERT INTO audit (time, event, detail) VALUES (?, ?, ?)",  # can it be written?
                            (_now(), "store_opened", json.dumps({"removed_partial_files": len(leftovers)})))
        except (sqlite3.Error, OSError) as error:
            if not is_disk_full(error) or not (self.root / "results.sqlite3").is_file():
                raise StoreError(f"the result store in {self.root} cannot be opened ({error}); check the "
                                 "state directory's disk and permissions") from error
            self.read_only = (f"Storage full: the results in {self.root} can be read and exported, but no new "
                              "capture is taken until space is freed; nothing was deleted")

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def audit(self, event: str, detail: dict | None = None) -> None:
        """Append an event to the audit log. On a full disk the line cannot be written: it goes to stderr (the
        system journal) instead of stopping the device."""
        line = (_now(), event, json.dumps(detail or {}))
        try:
            with self.lock:
                if self.read_only:
                    raise sqlite3.OperationalError("database or disk is full")
                self.db.execute("INSERT INTO audit (time, event, detail) VALUES (?, ?, ?)", line)
        except sqlite3.Error as error:
            if not is_disk_full(error):
                raise
            print(f"audit line not stored (the disk is full): {' '.join(line)}", file=sys.stderr)

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 1e6

    def check_space(self) -> None:
        if self.read_only:
            raise StoreError(self.read_only)
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
        try:
            capture_id = self._insert(record, time, name, digest, rgb)
        except sqlite3.Error as error:
            if not is_disk_full(error):
                raise
            raise StoreError("Storage full: the result could not be written (the disk is full). Export and "
                             "archive results, then free space; nothing was deleted.") from error
        return record.model_copy(update={"capture_id": capture_id})

    def _insert(self, record: CaptureRecord, time: str, name: str, digest: str, rgb: np.ndarray) -> int:
        """The capture's row, its cells, its outbox messages and its audit line, in one transaction; returns
        its id."""
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
            if self.messages:
                rows = [dict(r) for r in self.db.execute("SELECT * FROM captures WHERE sample_id = ?",
                                                         (record.sample_id,))]
                row = next(r for r in rows if r["id"] == capture_id)
                self.db.executemany("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                                    [(topic, payload, time) for topic, payload in self.messages(row, rows, rgb)])
            self.db.execute("INSERT INTO audit (time, event, detail) VALUES (?, ?, ?)",
                            (time, "capture_stored", json.dumps({"capture": capture_id, "sample": record.sample_id,
                                                                 "decision": record.decision})))
        return capture_id

    @staticmethod
    def record(row: dict) -> CaptureRecord:
        """The record of a stored capture row, as it was stored, with its capture id."""
        return CaptureRecord.model_validate_json(row["result"]).model_copy(update={"capture_id": row["id"]})

    def captures(self, sample_id: str | None = None, since: str | None = None, until: str | None = None,
                 limit: int = 1000) -> list[dict]:
        query, arguments = "SELECT * FROM captures WHERE 1=1", []
        if sample_id:  # found however it was typed (the stored ids are NFKC, without surrounding spaces)
            query, arguments = query + " AND sample_id = ?", arguments + [unicodedata.normalize("NFKC", sample_id).strip()]
        if since:
            query, arguments = query + " AND time >= ?", arguments + [utc_time(since)]
        if until:
            query, arguments = query + " AND time < ?", arguments + [utc_time(until)]
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
        """The stored image of that name (the store names them DATE_HASH.png); never a path outside the image
        folder. FileNotFoundError for any other name."""
        if not IMAGE_NAME.fullmatch(name) or not (self.images / name).is_file():
            raise FileNotFoundError(f"no stored image named {name[:80]!r}")
        return self.images / name

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
        how many. Each stored image once (identical frames share one); an image missing from the store is
        listed in MISSING-IMAGES.txt instead of stopping the export. The captures are marked exported;
        nothing is deleted."""
        rows = self.captures(sample_id, since, until, limit=1_000_000)
        csv_text, json_text = self.tables(rows)
        temporary = out_zip.with_name(f".{out_zip.name}.{uuid.uuid4().hex}.tmp")
        try:
            with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("NOTICE.txt", EXPORT_NOTICE + "\n")
                archive.writestr("results.csv", csv_text)
                archive.writestr("results.json", json_text)
                missing = []
                for name in dict.fromkeys(row["image"] for row in rows):
                    if (self.images / name).is_file():
                        archive.write(self.images / name, f"images/{name}")
                    else:
                        missing.append(name)
                if missing:
                    archive.writestr("MISSING-IMAGES.txt", "Stored images not found when this export was made "
                                     "(their results are in results.csv and results.json):\n" + "\n".join(missing) + "\n")
            os.replace(temporary, out_zip)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        try:  # the zip is whole; marking it is bookkeeping and may fail on a full disk
            with self.lock, self.db:
                self.db.executemany("UPDATE captures SET exported = 1 WHERE id = ?", [(row["id"],) for row in rows])
            self.audit("exported", {"captures": len(rows), "file": str(out_zip)})
        except sqlite3.Error as error:
            if not is_disk_full(error):
                raise
        return len(rows)

    # --- the outbox ------------------------------------------------------------------------------------
    def outbox_pending(self, limit: int = 50, after: int = 0) -> list[tuple[int, str, str]]:
        """The oldest messages not yet acknowledged by the broker (and after id `after`), in the order they
        were stored: (id, topic, payload)."""
        with self.lock:
            return [tuple(row) for row in self.db.execute(
                "SELECT id, topic, payload FROM outbox WHERE sent IS NULL AND id > ? ORDER BY id LIMIT ?",
                (after, limit))]

    def mark_sent(self, ids: list[int]) -> None:
        """Mark messages acknowledged (one transaction), and remove those sent more than OUTBOX_KEEP_DAYS ago."""
        now = _now()
        old = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=OUTBOX_KEEP_DAYS)).isoformat(timespec="milliseconds")
        with self.lock, self.db:
            self.db.executemany("UPDATE outbox SET sent = ? WHERE id = ?", [(now, i) for i in ids])
            self.db.execute("DELETE FROM outbox WHERE sent < ?", (old,))

    def outbox_state(self) -> tuple[int, str | None]:
        """(messages waiting, time of the last acknowledged one)."""
        with self.lock:
            waiting = self.db.execute("SELECT COUNT(*) FROM outbox WHERE sent IS NULL").fetchone()[0]
            last = self.db.execute("SELECT MAX(sent) FROM outbox").fetchone()[0]
        return waiting, last

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
