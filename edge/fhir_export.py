"""Stored samples as FHIR R4 Bundles (validated by fhir.resources' R4B models, whose DiagnosticReport,
Observation, Media, Specimen and Device are those of R4), for a clinic's records system.

One Bundle per sample (type "collection"): a DiagnosticReport (status "preliminary": nobody has reviewed and
signed the sample), Observations of its counts, a Media per stored field image, the Specimen (the sample id)
and the Device (its name, software and model bundle). Codes: LOINC 26446-5 "Blasts/100 leukocytes in Blood"
for the share of blast-like cells, only when a single-cell model classified the cells; the other counts
(fields per screening answer, white cells found) have no LOINC term and use LeukoScreen's own code system.
Resource ids are derived from the device, sample and capture, so exporting a sample again gives the same ids.
The research-use notice is in the report's conclusion.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Iterator

from leukoscreen import RESEARCH_USE_NOTICE, __version__
from leukoscreen.edge.result_store import ResultStore
from leukoscreen.edge.sample_summary import SampleSummary, summarize

LOINC = "http://loinc.org"
CODES = "https://leukoscreen.org/fhir/CodeSystem/screening"  # LeukoScreen's own codes
HL7 = "http://terminology.hl7.org/CodeSystem"
REPORT_CODE = {"system": CODES, "code": "blast-screening", "display": "Blood smear screening for blasts"}
FIELD_CODES = {"possible_blasts": "Fields with possible blasts", "indeterminate": "Fields indeterminate",
               "no_blasts": "Fields with no blasts suggested", "retake": "Fields not screened (retake)",
               "unfamiliar": "Fields not screened (unlike the model's training images)"}
CONCLUSION_NOTICE = "Screening aid only, not a diagnosis; preliminary until reviewed by a haematologist."


def _id(*parts) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "leukoscreen:" + "/".join(map(str, parts))))


def _code(system: str, code: str, display: str) -> dict:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _observation(key: str, code: dict, value: dict, subject: dict, summary: SampleSummary, note: str = "") -> dict:
    return {"resourceType": "Observation", "id": key, "status": "preliminary",
            "category": [_code(f"{HL7}/observation-category", "laboratory", "Laboratory")], "code": code,
            "effectiveDateTime": summary.last_time, **subject, **value,
            **({"note": [{"text": note}]} if note else {})}


def sample_bundle(store: ResultStore, sample_id: str, device: str, images: bool = True) -> dict:
    """The FHIR Bundle of one stored sample, as JSON-ready values, validated by fhir.resources (ValueError when
    the sample has no captures)."""
    from fhir.resources.R4B.bundle import Bundle  # the device imports it only when it exports FHIR

    rows = sorted(store.captures(sample_id, limit=1_000_000), key=lambda row: row["id"])
    summary = summarize(rows[0]["sample_id"] if rows else sample_id, rows)  # as stored, however it was typed
    key = (device, summary.sample_id)
    device_id, specimen_id, report_id = _id(*key, "device"), _id(*key, "specimen"), _id(*key, "report")
    subject = {"specimen": {"reference": f"urn:uuid:{specimen_id}"},
               "device": {"reference": f"urn:uuid:{device_id}"}}
    resources = [
        {"resourceType": "Device", "id": device_id, "status": "active",
         "deviceName": [{"name": device, "type": "user-friendly-name"}],
         "version": [{"type": {"text": "software"}, "value": __version__}]
         + [{"type": {"text": "model bundle"}, "value": bundle} for bundle in summary.bundles],
         "note": [{"text": f"LeukoScreen screening device. {RESEARCH_USE_NOTICE}"}]},
        {"resourceType": "Specimen", "id": specimen_id, "identifier": [{"system": f"urn:leukoscreen:{device}:sample",
                                                                       "value": summary.sample_id}],
         "type": {"text": "Peripheral blood smear"}, "receivedTime": summary.first_time},
    ]
    observations = [_observation(_id(*key, "fields", outcome), _code(CODES, f"fields-{outcome}", text),
                                 {"valueInteger": summary.fields[outcome]}, subject, summary)
                    for outcome, text in FIELD_CODES.items()]
    observations.append(_observation(_id(*key, "white-cells"), _code(CODES, "white-cells-found",
                                                                      "White cells found by the cell finder"),
                                     {"valueInteger": summary.white_cells_found}, subject, summary))
    if summary.cells_classified:
        share = 100.0 * summary.blast_like_cells / summary.cells_classified
        observations.append(_observation(
            _id(*key, "blasts"), _code(LOINC, "26446-5", "Blasts/100 leukocytes in Blood"),
            {"valueQuantity": {"value": round(share, 2), "unit": "%", "system": "http://unitsofmeasure.org",
                               "code": "%"}}, subject, summary,
            f"Cells the model called blast-like, of {summary.cells_classified} white cells it classified; not "
            "reviewed by a person."))
    media = []
    for row in rows:
        media_id = _id(*key, "capture", row["id"])
        content = {"contentType": "image/png", "title": row["image"], "creation": row["time"]}
        try:
            data = store.image_path(row["image"]).read_bytes()
        except (FileNotFoundError, OSError):
            content["title"] += " (missing from the device's store when this was exported)"
        else:
            content |= {"size": len(data), "hash": base64.b64encode(hashlib.sha1(data).digest()).decode()}
            if images:
                content["data"] = base64.b64encode(data).decode()
        record = json.loads(row["result"])
        resources.append({"resourceType": "Media", "id": media_id, "status": "completed",
                          "type": _code(f"{HL7}/media-type", "image", "Image"), "createdDateTime": row["time"],
                          "device": subject["device"], "content": content,
                          "note": [{"text": record["message"]}]})
        media.append({"comment": f"Field {row['id']}: {record['message']}", "link": {"reference": f"urn:uuid:{media_id}"}})
    report = {"resourceType": "DiagnosticReport", "id": report_id, "status": "preliminary",
              "identifier": [{"system": f"urn:leukoscreen:{device}:sample", "value": summary.sample_id}],
              "category": [_code(f"{HL7}/v2-0074", "HM", "Hematology")], "code": _code(**REPORT_CODE),
              "effectivePeriod": {"start": summary.first_time, "end": summary.last_time},
              "issued": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
              "specimen": [subject["specimen"]],
              "result": [{"reference": f"urn:uuid:{o['id']}"} for o in observations], "media": media,
              "conclusion": f"{summary.message} {CONCLUSION_NOTICE}"}
    entries = [report, *observations, *resources]
    bundle = {"resourceType": "Bundle", "id": _id(*key, "bundle"), "type": "collection",
              "identifier": {"system": f"urn:leukoscreen:{device}:sample", "value": summary.sample_id},
              "timestamp": report["issued"],
              "entry": [{"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource} for resource in entries]}
    Bundle.model_validate(bundle)  # pydantic ValidationError naming the element that is wrong
    return bundle


def fhir_export(store: ResultStore, device: str, sample_id: str | None = None, since: str | None = None,
                until: str | None = None) -> Iterator[str]:
    """The export's text, piece by piece (a sample's images are in memory one Bundle at a time): one sample's
    Bundle as JSON when `sample_id` is given, else NDJSON, a line per sample with a capture in the time range
    (FHIR bulk-data style; each Bundle holds the whole sample)."""
    if sample_id:
        yield json.dumps(sample_bundle(store, sample_id, device), indent=1)
        return
    for sample in dict.fromkeys(row["sample_id"] for row in store.captures(None, since, until, limit=1_000_000)):
        yield json.dumps(sample_bundle(store, sample, device)) + "\n"
