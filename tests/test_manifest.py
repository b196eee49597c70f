"""The bundle manifest's one typed definition: schema 2, the schema-1 path, the published JSON Schema."""
import json
import shutil

import pytest

from leukoscreen.cli import main
from leukoscreen.edge.bundle import BundleError, load_bundle
from leukoscreen.edge.screening import DEFAULT_BUNDLE, ScreeningModel, screen
from leukoscreen.edge.synthetic_smear import synthetic_field

from conftest import REPO


def schema_1(manifest: dict) -> dict:
    """A schema-2 manifest written the way schema 1 wrote it (before files entries said what they output)."""
    old = json.loads(json.dumps(manifest))
    files = old["files"]
    old["input"] |= {"pixels": "uint8 RGB 0-255 after preprocessing",
                     "per_format": {fmt: entry.pop("input") for fmt, entry in files.items()}}
    old["quantization"] = {"representative_images": old.pop("representative_images")} | {
        fmt: entry.pop("quantization") for fmt, entry in files.items()}
    for entry in files.values():
        del entry["outputs"]
        if entry.pop("classifier") is not None:
            raise ValueError("a two-stage example is not needed here")
    decision = old["decision"]
    decision["indeterminate_band"] = [decision["threshold"], decision.pop("refer_at")]
    return old | {"schema_version": 1}


@pytest.fixture
def copy(tmp_path):
    shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle")
    return tmp_path / "bundle"


def test_the_published_schema_is_the_one_in_the_code(capsys):
    assert main(["bundle", "schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((REPO / "edge" / "manifest.schema.json").read_text())
    assert printed["properties"]["schema_version"]["const"] == 2
    assert "threshold" in printed["$defs"]["DecisionRule"]["properties"]
    assert printed["$defs"]["FormatFile"]["properties"]["outputs"]["description"].startswith("probabilities:")


def test_schema_1_is_read_with_a_note_and_upgraded_to_the_same_answers(copy, capsys):
    current = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(schema_1(current)))
    old = load_bundle(copy)
    assert old.notes and "schema 1" in old.notes[0] and "leukoscreen bundle upgrade" in old.notes[0]
    assert old.manifest.model_dump() == load_bundle(DEFAULT_BUNDLE).manifest.model_dump()
    field = synthetic_field(3).image
    before = screen(field, ScreeningModel.open(old))
    assert main(["bundle", "upgrade", str(copy)]) == 0 and "rewritten" in capsys.readouterr().out
    upgraded = load_bundle(copy)
    assert upgraded.notes == () and json.loads((copy / "manifest.json").read_text())["schema_version"] == 2
    after = screen(field, ScreeningModel.open(upgraded))
    assert (after.decision, after.blast_score) == (before.decision, before.blast_score)
    assert main(["bundle", "check", str(copy)]) == 0 and "every file matches its sha256" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 3}, "schema_version 3 is not supported.*leukoscreen convert"),
    ({"colour_model": "x"}, "unknown key 'colour_model'"),
    ({"default_format": "onnx-fp32"}, "default_format 'onnx-fp32' is not among the files"),
    ({"decision": {"negative_classes": ["Healthy"], "threshold": 0.5, "refer_at": 0.9}}, "not class names"),
    ({"decision": {"negative_classes": ["Benign"], "threshold": 0.9, "refer_at": 0.5}}, "threshold <= refer_at"),
    ({"input": {"size": 128}}, "preprocess.input_size = 224 but input.size = 128"),
])
def test_inconsistent_manifests_are_refused_with_the_reason(copy, change, message):
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(manifest | change))
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_a_features_file_needs_its_classifier(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["tflite-int8"]["outputs"] = "features"  # what a schema-1 device could not tell
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="outputs = 'features' needs a classifier"):
        load_bundle(copy)
