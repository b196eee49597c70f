"""The regional collector's database: every device's results, sample summaries and last status, in SQLite (the
default) or PostgreSQL (a postgresql:// URL), through SQLAlchemy. Idempotent: a result is kept once by its
message id however often it arrives, and a sample's summary is replaced only by one covering at least as
many captures.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, create_engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import ArgumentError, DataError, IntegrityError, SQLAlchemyError

metadata = MetaData()
devices = Table("devices", metadata,
                Column("device", String(64), primary_key=True), Column("state", String(16), nullable=False),
                Column("status", Text, nullable=False), Column("last_seen", String(40), nullable=False))
results = Table("results", metadata,
                Column("id", String(64), primary_key=True), Column("device", String(64), nullable=False, index=True),
                Column("capture_id", Integer), Column("sample_id", String(128), nullable=False),
                Column("time", String(40), nullable=False), Column("decision", String(20), nullable=False),
                Column("message", Text, nullable=False), Column("payload", Text, nullable=False),
                Column("received", String(40), nullable=False))
samples = Table("samples", metadata,
                Column("device", String(64), primary_key=True), Column("sample_id", String(128), primary_key=True),
                Column("captures", Integer, nullable=False), Column("decision", String(20), nullable=False),
                Column("message", Text, nullable=False), Column("last_time", String(40), nullable=False),
                Column("summary", Text, nullable=False), Column("received", String(40), nullable=False))
INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


class MessageError(ValueError):
    """A message that is not one the devices send; it is dropped (and counted), never stored."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def database_url(text: str) -> str:
    """A SQLAlchemy URL: sqlite:///FILE, or postgresql://USER@HOST/DB (driven by psycopg 3)."""
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


def _text(value, limit: int, key: str) -> str:
    """A text field of a message, at most `limit` characters (the column's size in PostgreSQL) and without NUL."""
    text = str(value)
    if len(text) > limit or "\x00" in text:
        raise ValueError(f"{key} is longer than {limit} characters or holds a NUL character")
    return text


def _capture_id(message: dict) -> int:
    value = int(message["capture_id"])
    if not 0 < value < 2**31:
        raise ValueError(f"capture_id {value} is out of range")
    return value


def _changed(connection, statement, key) -> bool:
    """Run an insert-or-update; True when it wrote a row (RETURNING, since psycopg's rowcount is -1 here)."""
    return connection.execute(statement.returning(key)).first() is not None


class CollectorStore:
    def __init__(self, url: str):
        url = database_url(url)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = create_engine(url)
        except (ArgumentError, ImportError) as error:
            raise ValueError(f"--db {url!r}: {error}; use sqlite:///FILE or postgresql://USER@HOST/DATABASE") from error
        if self.engine.dialect.name not in INSERTS:
            raise ValueError(f"--db {url!r}: {self.engine.dialect.name} is not supported; use SQLite or PostgreSQL")
        self.insert = INSERTS[self.engine.dialect.name]
        try:
            metadata.create_all(self.engine)
        except SQLAlchemyError as error:
            raise ValueError(f"the collector's database {self.engine.url!r} cannot be opened: {error.orig or error}"
                             ) from error

    def add(self, device: str, kind: str, payload: bytes) -> bool:
        """Keep one message from `device`'s `kind` topic (results, samples, status). True when it changed the
        database (False: a repeat). MessageError for a message the devices do not send."""
        try:
            message = json.loads(payload)
            if not isinstance(message, dict):
                raise TypeError("not a JSON object")
            with self.engine.begin() as connection:
                changed = getattr(self, f"_add_{kind}")(connection, device, message)
                if kind != "status":
                    self._seen(connection, device)
                return changed
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, DataError, IntegrityError) as error:
            # DataError, IntegrityError: a value the database refuses (sending it again would not help)
            raise MessageError(f"{kind} message from {device!r} dropped: {error!r}"[:300]) from error

    def _add_results(self, connection, device: str, message: dict) -> bool:
        record = message["record"]
        row = {"id": _text(message["id"], 64, "id"), "device": device, "capture_id": _capture_id(message),
               "sample_id": _text(message["sample_id"], 128, "sample_id"), "time": _text(message["time"], 40, "time"),
               "decision": _text(record["decision"], 20, "decision"), "message": _text(record["message"], 2000, "message"),
               "payload": json.dumps(message), "received": _now()}
        return _changed(connection, self.insert(results).values(row).on_conflict_do_nothing(), results.c.id)

    def _add_samples(self, connection, device: str, message: dict) -> bool:
        summary = message["summary"]
        row = {"device": device, "sample_id": _text(summary["sample_id"], 128, "sample_id"),
               "captures": int(summary["captures"]), "decision": _text(summary["decision"], 20, "decision"),
               "message": _text(summary["message"], 2000, "message"), "last_time": _text(summary["last_time"], 40, "time"), "summary": json.dumps(summary), "received": _now()}
        statement = self.insert(samples).values(row)
        statement = statement.on_conflict_do_update(
            index_elements=["device", "sample_id"], set_={k: statement.excluded[k] for k in row if k != "sample_id"},
            where=samples.c.captures <= statement.excluded.captures)
        return _changed(connection, statement, samples.c.sample_id)

    def _add_status(self, connection, device: str, message: dict) -> bool:
        row = {"device": device, "state": _text(message["state"], 16, "state"), "status": json.dumps(message),
               "last_seen": _now()}
        statement = self.insert(devices).values(row)
        statement = statement.on_conflict_do_update(index_elements=["device"], set_={k: row[k] for k in row})
        return _changed(connection, statement, devices.c.device)

    def _seen(self, connection, device: str) -> None:
        """A message arrived from `device` (whose status may not have arrived yet)."""
        row = {"device": device, "state": "unknown", "status": "{}", "last_seen": _now()}
        statement = self.insert(devices).values(row)
        connection.execute(statement.on_conflict_do_update(index_elements=["device"],
                                                           set_={"last_seen": row["last_seen"]}))

    # --- what the page shows -------------------------------------------------------------------------------
    def device_list(self) -> list[dict]:
        counts = (select(results.c.device, func.count().label("results"), func.max(results.c.time).label("last_result"))
                  .group_by(results.c.device).subquery())
        query = (select(devices, counts.c.results, counts.c.last_result)
                 .join(counts, counts.c.device == devices.c.device, isouter=True).order_by(devices.c.device))
        with self.engine.connect() as connection:
            return [dict(row._mapping) | {"status": json.loads(row.status), "results": row.results or 0}
                    for row in connection.execute(query)]

    def sample_list(self, device: str | None = None, limit: int = 500) -> list[dict]:
        query = select(samples.c.device, samples.c.sample_id, samples.c.captures, samples.c.decision,
                       samples.c.message, samples.c.last_time).order_by(samples.c.last_time.desc()).limit(limit)
        if device:
            query = query.where(samples.c.device == device)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def result_list(self, device: str, sample_id: str) -> list[dict]:
        query = (select(results.c.id, results.c.capture_id, results.c.time, results.c.decision, results.c.message)
                 .where(results.c.device == device, results.c.sample_id == sample_id).order_by(results.c.capture_id))
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]
