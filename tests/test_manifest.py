"""The bundle manifest's one typed definition: schema 3, the paths from schemas 1 and 2, the published JSON Schema."""
import json
import re
import shutil

import pytest

from leukoscreen.cli import main
from leukoscreen.edge.bundle import BundleError, load_bundle
from leukoscreen.edge.screening import DEFAULT_BUNDLE, ScreeningModel, screen
from leukoscreen.edge.synthetic_smear import synthetic_field

from conftest import REPO, write_manifest_values


def without_self_test(manifest: dict) -> dict:
    """A manifest as schema 2 wrote it: no self-test, no manifest_sha256."""
    old = json.loads(json.dumps(manifest))
    old.pop("self_test", None)
    old.pop("manifest_sha256", None)
    for entry in old["files"].values():
        entry.pop("self_test_outputs", None)
    return old | {"schema_version": 2}


def schema_1(manifest: dict) -> dict:
    """A current manifest written the way schema 1 wrote it (before files entries said what they output)."""
    old = without_self_test(manifest)
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
    assert printed["properties"]["schema_version"]["const"] == 3
    assert "threshold" in printed["$defs"]["DecisionRule"]["properties"]
    assert printed["$defs"]["FormatFile"]["properties"]["outputs"]["description"].startswith("probabilities:")


@pytest.mark.parametrize("version", [1, 2])
def test_older_schemas_are_read_with_a_note_and_upgraded_to_the_same_answers(copy, capsys, version):
    current = json.loads((copy / "manifest.json").read_text())
    write_manifest_values(copy, schema_1(current) if version == 1 else without_self_test(current))
    old = load_bundle(copy)
    assert old.notes and f"schema {version}" in old.notes[0] and "leukoscreen bundle upgrade" in old.notes[0]
    assert "without a self-test" in old.notes[0] and old.manifest.self_test is None
    expected = load_bundle(DEFAULT_BUNDLE).manifest.model_dump()
    expected["self_test"] = None
    for entry in expected["files"].values():
        entry["self_test_outputs"] = None
    assert old.manifest.model_dump() == expected
    field = synthetic_field(3).image
    before = screen(field, ScreeningModel.open(old))
    assert main(["bundle", "upgrade", str(copy)]) == 0 and "rewritten" in capsys.readouterr().out
    upgraded = load_bundle(copy)
    assert upgraded.notes == () and json.loads((copy / "manifest.json").read_text())["schema_version"] == 3
    after = screen(field, ScreeningModel.open(upgraded))
    assert (after.decision, after.blast_score) == (before.decision, before.blast_score)
    assert main(["bundle", "check", str(copy)]) == 0 and "every file matches its sha256" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 4}, "schema_version 4 is not supported.*leukoscreen convert"),
    ({"schema_version": True}, "schema_version 'true' is not supported"),
    ({"colour_model": "x"}, "unknown key 'colour_model'"),
    ({"default_format": "onnx-fp32"}, "default_format 'onnx-fp32' is not among the files"),
    ({"decision": {"negative_classes": ["Healthy"], "threshold": 0.5, "refer_at": 0.9}}, "not class names"),
    ({"decision": {"negative_classes": ["Benign"], "threshold": 0.9, "refer_at": 0.5}}, "threshold <= refer_at"),
    ({"input": {"size": 128}}, "preprocess.input_size = 224 but input.size = 128"),
    ({"class_names": ["Benign", "Early", "Pre", "Pre"]}, "name a class twice"),
    ({"decision": {"negative_classes": ["Benign", "Benign"], "threshold": 0.5, "refer_at": 0.9}}, "each class once"),
    ({"decision": {"negative_classes": ["Benign", "Early", "Pre", "Pro"], "threshold": 0.5, "refer_at": 0.9}},
     "not every class"),
    ({"decision": {"negative_classes": ["Benign"], "threshold": "0.6", "refer_at": 0.9}},
     "decision.threshold = '0.6'"),
    ({"calibration": {"temperature": float("inf"), "fitted_on": "x"}}, "calibration.temperature"),
    ({"calibration": {"temperature": 1e300, "fitted_on": "x"}}, "calibration.temperature"),
    ({"preprocess": {"resize": 1_000_000_000, "input_size": 224}}, "less than or equal to 4096"),
    ({"preprocess": {"resize": 100, "input_size": 224}}, "smaller than input_size"),
    ({"preprocess": {"colour": "reinhard", "input_size": 224}}, "'reinhard' needs preprocess.reference"),
    ({"name": "leuko\x1b[2Jscreen"}, "name = "),
    ({"version": "6" * 81}, "version = "),
])
def test_inconsistent_manifests_are_refused_with_the_reason(copy, change, message):
    manifest = json.loads((copy / "manifest.json").read_text())
    write_manifest_values(copy, manifest | change)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


@pytest.mark.parametrize("change", [
    lambda m: m | {"class_names": m["class_names"][::-1]},  # every blast field would read "No blasts suggested"
    lambda m: m | {"calibration": m["calibration"] | {"temperature": 100.0}},
    lambda m: m | {"preprocess": m["preprocess"] | {"colour": "rgb"}},
    lambda m: m | {"self_test": m["self_test"] | {"tolerance": 1.0}},
    lambda m: {key: value for key, value in m.items() if key != "manifest_sha256"},
])
def test_a_manifest_changed_after_it_was_written_is_refused(copy, change):
    """Valid values, wrong answers: only the manifest's own digest can tell such an edit (or a mix-up)."""
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(change(manifest)))
    with pytest.raises(BundleError, match="changed after it was written|has no manifest_sha256"):
        load_bundle(copy)
    text = (DEFAULT_BUNDLE / "manifest.json").read_text()  # a second "threshold" key: JSON keeps the last
    (copy / "manifest.json").write_text(re.sub(r'("threshold": [0-9.e-]+)', r'\1, "threshold": 0.99', text, count=1))
    with pytest.raises(BundleError, match="changed after it was written"):
        load_bundle(copy)


@pytest.mark.parametrize("change, message", [
    (lambda t: t | {"fields": 1_000_000}, "less than or equal to 64"),  # 1 TB of generated fields
    (lambda t: t | {"reference": []}, "self_test.reference is not 6 rows of 4"),
])
def test_a_self_test_of_the_wrong_shape_is_refused_before_it_runs(copy, change, message):
    manifest = json.loads((copy / "manifest.json").read_text())
    write_manifest_values(copy, manifest | {"self_test": change(manifest["self_test"])})
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)
    manifest["files"]["onnx-int8"]["self_test_outputs"] = []
    write_manifest_values(copy, manifest)
    with pytest.raises(BundleError, match="files.onnx-int8.self_test_outputs is not 6 rows"):
        load_bundle(copy)


def test_a_features_file_needs_its_classifier(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["tflite-int8"]["outputs"] = "features"  # what a schema-1 device could not tell
    write_manifest_values(copy, manifest)
    with pytest.raises(BundleError, match="outputs = 'features' needs a classifier"):
        load_bundle(copy)


def test_a_format_must_name_a_file_of_its_kind_and_input(copy):
    manifest = json.loads((copy / "manifest.json").read_text())
    swapped = json.loads(json.dumps(manifest))
    swapped["files"]["tflite-int8"]["file"] = "model-int8.onnx"
    write_manifest_values(copy, swapped)
    with pytest.raises(BundleError, match="files.tflite-int8.file 'model-int8.onnx' is not a tflite file"):
        load_bundle(copy)
    wrong_input = json.loads(json.dumps(manifest))
    wrong_input["files"]["tflite-int8"]["input"]["zero_point"] = 0
    write_manifest_values(copy, wrong_input)
    with pytest.raises(Exception, match=r"takes int8 input \(scale 1, zero point -128\) but the manifest says int8"):
        load_bundle(copy).runner()


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "cannot be read as JSON"),
    ('{"schema_version": 1, "files": [], "decision": {}}', "schema-1 manifest of an unexpected shape"),
])
def test_malformed_manifests_are_messages(copy, text, message):
    (copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=message):
        load_bundle(copy)


def test_a_schema_1_threshold_outside_its_band_is_refused(copy):
    old = schema_1(json.loads((copy / "manifest.json").read_text()))
    old["decision"]["threshold"] = old["decision"]["indeterminate_band"][1] + 0.01
    write_manifest_values(copy, old)
    with pytest.raises(BundleError, match="not two numbers around the threshold"):
        load_bundle(copy)
