"""Request and response models of the HTTP API: they validate what comes in and are the OpenAPI
description's schemas (/openapi.json)."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import HTTPException
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from leukoscreen import RESEARCH_USE_NOTICE
from leukoscreen.edge.capture_record import CaptureRecord, Outcome
from leukoscreen.edge.result_store import check_sample_id, utc_time
from leukoscreen.edge.validation import describe


def _iso_time(text: str) -> str:
    utc_time(text)  # ValueError with the reason
    return text


IsoTime = Annotated[str, AfterValidator(_iso_time)]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SampleField(Request):
    sample_id: str = Field("", description="the sample this capture belongs to; empty: a new id is made. Up to "
                                           "64 letters or digits (any script), with - _ . : or spaces between them")

    @field_validator("sample_id", mode="before")
    @classmethod
    def _no_null(cls, value):
        return "" if value is None else value

    @field_validator("sample_id")
    @classmethod
    def _storable(cls, value: str) -> str:
        return check_sample_id(value)


class ClassifyRequest(SampleField):
    """JSON body of `POST /api/classify`: capture a field, like the hardware button."""


class ExportRequest(Request):
    format: Literal["zip", "csv", "json", "fhir"] = Field("zip", description="zip: CSV, JSON and the images; fhir: "
                                                         "one sample's FHIR R4 Bundle (JSON), or one Bundle per "
                                                         "sample (NDJSON) without sample_id")
    sample_id: str | None = Field(None, description="one sample (default: every capture)")
    since: IsoTime | None = Field(None, description="ISO date or time (UTC unless it has an offset), included")
    until: IsoTime | None = Field(None, description="ISO date or time, not included")

    @field_validator("format", mode="before")
    @classmethod
    def _default_format(cls, value):
        return "zip" if value is None or value == "" else value

    @field_validator("sample_id", "since", "until", mode="before")
    @classmethod
    def _empty_is_none(cls, value):  # an empty form field; 0, false or [] stay wrong values
        return None if value == "" else value


def parse(model: type[Request], values: dict | None = None, body: bytes | None = None) -> Request:
    """A request model from form values or a JSON body; HTTP 400 naming what is wrong."""
    try:
        if body is not None:
            return model.model_validate_json(body if body.strip() else b"{}")
        return model.model_validate(values or {})
    except ValidationError as error:
        kind = error.errors()[0]["type"]
        if kind == "json_invalid":
            raise HTTPException(400, f"the body is not valid JSON ({error.errors()[0]['msg']}); send "
                                     "{\"sample_id\": \"...\"} or nothing") from error
        if kind == "model_type":
            raise HTTPException(400, "the JSON body must be an object like {\"sample_id\": \"S-12\"}") from error
        raise HTTPException(400, describe(error)) from error


class CaptureView(BaseModel):
    """A stored capture: its columns in the store, and its record as it was stored."""
    id: int
    sample_id: str
    time: str
    decision: Outcome
    message: str
    blast_score: float | None
    image: str
    image_sha256: str
    bundle: str
    software_version: str
    exported: bool
    result: CaptureRecord
    image_url: str
    thumbnail_url: str
    timings_ms: dict[str, float] | None = Field(None, description="classify only: how long each step took")

    @classmethod
    def of(cls, row: dict, record: CaptureRecord, **values) -> "CaptureView":
        columns = {k: row[k] for k in ("id", "sample_id", "time", "decision", "message", "blast_score", "image",
                                      "image_sha256", "bundle", "software_version", "exported")}
        return cls(**columns, result=record, image_url=f"/api/images/{row['image']}",
                   thumbnail_url=f"/api/images/{row['image']}?size=thumb", **values)


class CaptureList(BaseModel):
    captures: list[CaptureView]
    notice: str = RESEARCH_USE_NOTICE


class SampleView(CaptureList):
    sample_id: str


class SampleSummary(BaseModel):
    id: str
    created: str
    captures: int
    last_time: str | None
    decisions: list[str]
    last_capture: int | None
    thumbnail_url: str | None


class SampleList(BaseModel):
    samples: list[SampleSummary]
    notice: str = RESEARCH_USE_NOTICE
