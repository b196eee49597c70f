"""Stored samples as FHIR R4 Bundles, checked by fhir.resources' models; the sample summary they are made from."""
from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle

from leukoscreen.edge.capture_record import CaptureRecord
from leukoscreen.edge.fhir_export import fhir_export, sample_bundle
from leukoscreen.edge.quality import QualityReport
from leukoscreen.edge.result_store import ResultStore
from leukoscreen.edge.sample_summary import summarize

QUALITY = QualityReport(focus=50.0, dark_fraction=0, clipped_fraction=0, stain_fraction=0.1, cells=1)


def record(sample_id: str, decision: str, cells_found: int = 0, counts: dict | None = None) -> CaptureRecord:
    counts = counts or {}
    fraction = counts.get("blast", 0) / sum(counts.values()) if counts else None
    return CaptureRecord(decision=decision, message=f"{decision}. Research use only.", quality=QUALITY,
                         cells_found=cells_found, counts=counts, blast_fraction=fraction, bundle="cells 1",
                         bundle_sha256="abc", sample_id=sample_id)


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)


@pytest.fixture
def store(tmp_path):
    store = ResultStore(tmp_path / "state", min_free_mb=0)
    store.add(record("S-1", "possible_blasts", 5, {"blast": 3, "lymphocyte": 1}), frame(0))
    store.add(record("S-1", "no_blasts", 4, {"lymphocyte": 4}), frame(1))
    store.add(record("S-1", "retake"), frame(2))
    store.add(record("S-2", "no_blasts", 6), frame(3))  # a field model: no cells classified
    yield store
    store.close()


def resources(bundle: dict, kind: str) -> list[dict]:
    return [entry["resource"] for entry in bundle["entry"] if entry["resource"]["resourceType"] == kind]


def test_the_summary_counts_fields_and_cells(store):
    summary = summarize("S-1", store.captures("S-1"))
    assert summary.fields == {"possible_blasts": 1, "indeterminate": 0, "no_blasts": 1, "unfamiliar": 0, "retake": 1}
    assert (summary.white_cells_found, summary.cells_classified, summary.blast_like_cells) == (9, 8, 3)
    assert summary.decision == "possible_blasts" and summary.screened_fields == 2
    assert "refer" in summary.message and "Research use only" in summary.message
    only_retakes = summarize("S-3", [dict(store.captures("S-1")[0], decision="retake")])
    assert only_retakes.decision == "not_screened" and "retake" in only_retakes.message
    with pytest.raises(ValueError, match="no stored captures"):
        summarize("S-9", [])


def test_a_sample_is_a_valid_preliminary_bundle_with_blasts_per_100_leukocytes(store):
    bundle = sample_bundle(store, "S-1", "clinic-a")
    Bundle.model_validate(bundle)
    [report] = resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert "not a diagnosis" in report["conclusion"] and "Research use only" in report["conclusion"]
    assert "haematologist" in report["conclusion"]
    observations = {o["code"]["coding"][0]["code"]: o for o in resources(bundle, "Observation")}
    blasts = observations["26446-5"]
    assert blasts["code"]["coding"][0]["system"] == "http://loinc.org"
    assert blasts["valueQuantity"]["value"] == 37.5 and blasts["valueQuantity"]["code"] == "%"  # 3 of 8 cells
    assert observations["fields-possible_blasts"]["valueInteger"] == 1
    assert observations["fields-retake"]["valueInteger"] == 1
    assert observations["white-cells-found"]["valueInteger"] == 9
    assert {r["reference"] for r in report["result"]} == {f"urn:uuid:{o['id']}" for o in observations.values()}
    # every field image, byte for byte, with its SHA-1 as FHIR's Attachment.hash wants it
    media = resources(bundle, "Media")
    assert len(media) == 3 and len(report["media"]) == 3
    for item, row in zip(media, store.captures("S-1")[::-1]):
        stored = store.image_path(row["image"]).read_bytes()
        assert base64.b64decode(item["content"]["data"]) == stored
        assert item["content"]["hash"] == base64.b64encode(hashlib.sha1(stored).digest()).decode()
    [device] = resources(bundle, "Device")
    assert device["deviceName"][0]["name"] == "clinic-a"
    assert "cells 1" in [v["value"] for v in device["version"]]


def test_a_field_model_sample_has_no_loinc_blast_share_and_ids_are_stable(store):
    bundle = sample_bundle(store, "S-2", "clinic-a")
    codes = {o["code"]["coding"][0]["code"] for o in resources(bundle, "Observation")}
    assert "26446-5" not in codes and "white-cells-found" in codes  # no cell was classified: no share
    again = sample_bundle(store, "S-2", "clinic-a")
    assert [e["fullUrl"] for e in again["entry"]] == [e["fullUrl"] for e in bundle["entry"]]
    typed = sample_bundle(store, " Ｓ-２ ", "clinic-a")  # typed full-width: the stored sample, its ids and id
    assert typed["id"] == bundle["id"] and [e["fullUrl"] for e in typed["entry"]] == [e["fullUrl"] for e in bundle["entry"]]
    assert "Ｓ" not in json.dumps(typed, ensure_ascii=False)
    other_device = sample_bundle(store, "S-2", "clinic-b")
    assert not {e["fullUrl"] for e in other_device["entry"]} & {e["fullUrl"] for e in bundle["entry"]}
    with pytest.raises(ValueError, match="no stored captures"):
        sample_bundle(store, "nobody", "clinic-a")


def test_a_missing_image_is_named_and_the_bundle_stays_valid(store):
    row = store.captures("S-2")[0]
    store.image_path(row["image"]).unlink()
    [media] = resources(sample_bundle(store, "S-2", "clinic-a"), "Media")
    assert "missing" in media["content"]["title"] and "data" not in media["content"]


def test_all_samples_are_ndjson_one_bundle_per_line(store):
    lines = "".join(fhir_export(store, "clinic-a")).splitlines()
    bundles = [Bundle.model_validate_json(line) for line in lines]
    assert sorted(b.identifier.value for b in bundles) == ["S-1", "S-2"]
    assert not list(fhir_export(store, "clinic-a", since="2999-01-01"))


def test_the_cli_and_the_api_export_fhir(store, tmp_path, device):
    from leukoscreen.cli import main
    store.close()
    out = tmp_path / "S-1.fhir.json"
    assert main(["export", "--state-dir", str(tmp_path / "state"), "--sample", "S-1", "--format", "fhir",
                 "--device", "clinic-a", "--out", str(out)]) == 0
    assert Bundle.model_validate_json(out.read_text()).identifier.value == "S-1"
    config = tmp_path / "device.toml"  # the device's config: its state folder and its name, as its own export
    config.write_text(f'state_dir = "{tmp_path / "state"}"\ndevice_id = "clinic-a"\n')
    assert main(["export", "--config", str(config), "--sample", "S-1", "--format", "fhir",
                 "--out", str(tmp_path / "by-config.json")]) == 0
    assert json.loads((tmp_path / "by-config.json").read_text())["id"] == json.loads(out.read_text())["id"]
    assert main(["export", "--state-dir", str(tmp_path / "state"), "--format", "fhir", "--device", "a/b",
                 "--out", str(tmp_path / "bad.ndjson")]) != 0  # not a name a topic or an id can carry
    assert not (tmp_path / "bad.ndjson").exists()

    device.client.post("/api/classify", json={"sample_id": "W-1"})
    answer = device.client.post("/api/export", json={"format": "fhir", "sample_id": "W-1"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/fhir+json")
    assert '.fhir.json"' in answer.headers["content-disposition"]
    bundle = Bundle.model_validate_json(answer.text)
    assert bundle.entry[0].resource.status == "preliminary"
    everything = device.client.post("/api/export", json={"format": "fhir"})
    assert everything.headers["content-type"].startswith("application/fhir+ndjson")
    exported = [Bundle.model_validate_json(line).identifier.value for line in everything.text.splitlines()]
    assert "W-1" in exported and len(exported) == len(set(exported))
