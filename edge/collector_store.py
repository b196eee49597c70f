"""The regional collector's database: every device's results, sample summaries and last status, in SQLite (the
default) or PostgreSQL (a postgresql:// URL), through SQLAlchemy. Idempotent: a result is kept once by its
message id however often it arrives, and a sample's summary is replaced only by one covering at least as
many captures.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError
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
MAX_MESSAGE_BYTES = 1_000_000   # a result with its thumbnail is about 20 kB
MAX_DEPTH = 32                  # nesting of a message's JSON (a device's is at most 5 deep)


def _depth(value) -> int:
    """How deeply lists and objects nest in a JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level > MAX_DEPTH:
                break
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {text[:40]} is out of range")
    return number


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _text(limit: int, min_length: int = 0):
    """A text field of at most `limit` characters (the column's size in PostgreSQL), without NUL."""
    return Annotated[str, StringConstraints(min_length=min_length, max_length=limit, pattern=r"^[^\x00]*$")]


def _past_time(text: str) -> str:
    """An ISO 8601 time with its zone, not more than a day ahead of the collector's clock."""
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None or moment > dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1):
        raise ValueError("not an ISO 8601 time with its zone, up to now")
    return text


Time = Annotated[_text(40), AfterValidator(_past_time)]
Count = Annotated[int, Field(ge=0, lt=2**31)]


class _Message(BaseModel):
    """What a device sends (mqtt_messages.py), checked strictly: no number for a text, no text for a number."""
    model_config = ConfigDict(strict=True, extra="allow")


class _Record(_Message):
    decision: _text(20)
    message: _text(2000)


class ResultMessage(_Message):
    id: _text(64, 1)
    device: str
    capture_id: Annotated[int, Field(gt=0, lt=2**31)]
    sample_id: _text(128)
    time: Time
    record: _Record


class _Summary(_Message):
    sample_id: _text(128)
    captures: Count
    decision: _text(20)
    message: _text(2000)
    last_time: Time


class SamplesMessage(_Message):
    id: _text(64, 1)
    device: str
    summary: _Summary


class StatusMessage(_Message):
    state: _text(16, 1)
    device: str


MESSAGES = {"results": ResultMessage, "samples": SamplesMessage, "status": StatusMessage}


class MessageError(ValueError):
    """A message that is not one the devices send; it is dropped (and counted), never stored."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def database_url(text: str) -> str:
    """A SQLAlchemy URL: sqlite:///FILE, or postgresql://USER@HOST/DB (driven by psycopg 3)."""
    if text.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + text.split("://", 1)[1]
    return text


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
            if len(payload) > MAX_MESSAGE_BYTES:
                raise ValueError(f"{len(payload):,} bytes, more than {MAX_MESSAGE_BYTES:,}")
            message = json.loads(payload, parse_float=_finite, parse_constant=_no_constant)
            if _depth(message) > MAX_DEPTH:
                raise ValueError(f"nested more than {MAX_DEPTH} deep")
            json.dumps(message, ensure_ascii=False).encode("utf-8")  # a lone surrogate could not be shown
            checked = MESSAGES[kind].model_validate(message)
            if checked.device != device:
                raise ValueError(f"it names the device {checked.device[:64]!r}, not its topic's")
            with self.engine.begin() as connection:
                changed = getattr(self, f"_add_{kind}")(connection, device, checked, message)
                if kind != "status":
                    self._seen(connection, device)
                return changed
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
            raise MessageError(f"{kind} message from {device!r} dropped: {problems}"[:300]) from error
        except (ValueError, RecursionError, DataError, IntegrityError) as error:
            # DataError, IntegrityError: a value the database refuses (sending it again would not help)
            raise MessageError(f"{kind} message from {device!r} dropped: {error!r}"[:300]) from error

    def _add_results(self, connection, device: str, checked: ResultMessage, message: dict) -> bool:
        row = {"id": checked.id, "device": device, "capture_id": checked.capture_id, "sample_id": checked.sample_id,
               "time": checked.time, "decision": checked.record.decision, "message": checked.record.message,
               "payload": json.dumps(message), "received": _now()}
        return _changed(connection, self.insert(results).values(row).on_conflict_do_nothing(), results.c.id)

    def _add_samples(self, connection, device: str, checked: SamplesMessage, message: dict) -> bool:
        summary = checked.summary
        row = {"device": device, "sample_id": summary.sample_id, "captures": summary.captures,
               "decision": summary.decision, "message": summary.message, "last_time": summary.last_time,
               "summary": json.dumps(message["summary"]), "received": _now()}
        statement = self.insert(samples).values(row)
        statement = statement.on_conflict_do_update(
            index_elements=["device", "sample_id"], set_={k: statement.excluded[k] for k in row if k != "sample_id"},
            where=samples.c.captures <= statement.excluded.captures)
        return _changed(connection, statement, samples.c.sample_id)

    def _add_status(self, connection, device: str, checked: StatusMessage, message: dict) -> bool:
        row = {"device": device, "state": checked.state, "status": json.dumps(message),
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
    def holds_results(self) -> bool:
        with self.engine.connect() as connection:
            return connection.execute(select(results.c.id).limit(1)).first() is not None

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
