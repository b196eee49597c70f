"""A tiny trained run converted into every format, loaded back through the device runtimes."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from leukoscreen.cli import main
from leukoscreen.convert.bundle_builder import TFLITE_DERIVED
from leukoscreen.edge.bundle import BundleError, load_bundle
from leukoscreen.edge.image_io import read_image
from leukoscreen.edge.runtimes import RuntimeOptions, RuntimeProblem, open_runner

from conftest import ALL_FORMATS, BLOCK_DESKTOP_IMPORTS, REPO, left_out_formats, smear_image, write_rgb, write_manifest_values


def test_manifest_holds_the_contract(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["intended_use"] == "Research use only. Not for use in diagnostic procedures."
    assert manifest["class_names"] == ["benign", "malignant"] and manifest["output"] == "sigmoid"
    assert manifest["schema_version"] == 3 and manifest["files"]["tflite-int8"]["input"]["dtype"] == "int8"
    left_out = left_out_formats((bundle.parent / "convert.log").read_text())
    assert set(manifest["files"]) == set(ALL_FORMATS) - left_out and manifest["default_format"] not in left_out
    for fmt in manifest["files"]:
        assert {"accuracy", "accuracy_change", "top1_agreement", "max_probability_difference",
                "size_bytes"} <= set(manifest["metrics"][fmt])
    assert manifest["metrics"]["keras-fp32"]["accuracy"] >= 0
    assert manifest["decision"]["threshold"] <= manifest["decision"]["refer_at"]  # the indeterminate band
    assert manifest["calibration"]["temperature"] > 0
    screening = manifest["metrics"][manifest["default_format"]]["screening"]  # the decision on the test split
    test_images = sum(c["support"] for c in manifest["metrics"]["keras-fp32"]["per_class"].values())
    assert screening["blast"]["n"] + screening["non_blast"]["n"] == test_images
    assert 0 <= screening["sensitivity"] <= 1 and 0 <= screening["specificity"] <= 1
    assert (bundle / "split.csv").exists()


def test_int8_file_is_smaller_and_agrees_with_float(bundle):
    manifest = json.loads((bundle / "manifest.json").read_text())
    metrics = manifest["metrics"]
    if "tflite-fp32" not in metrics:
        pytest.skip("the session bundle's tflite-fp32 was left out (its features did not fit the guard)")
    assert metrics["tflite-int8"]["size_bytes"] * 3 < metrics["tflite-fp32"]["size_bytes"]
    assert metrics["tflite-fp32"]["top1_agreement"] == 1.0
    assert metrics["tflite-fp32"]["max_probability_difference"] < 1e-3


def test_bundle_runs_where_tensorflow_cannot_be_imported(bundle, tmp_path):
    image = tmp_path / "field.png"
    write_rgb(image, smear_image(np.random.default_rng(9), True))
    code = BLOCK_DESKTOP_IMPORTS + f"""
from leukoscreen.edge.bundle import load_bundle
from leukoscreen.edge.image_io import read_image
from leukoscreen.edge.preprocessing import preprocess
from leukoscreen.edge.runtimes import open_runner
bundle = load_bundle({str(bundle)!r})
x = preprocess(read_image({str(image)!r}), bundle.preprocess)
for fmt in bundle.formats:
    p = open_runner(bundle.file(fmt)).predict(x)
    assert p.shape == (1, 2) and abs(p.sum() - 1) < 1e-3, (fmt, p)
print('ran', len(bundle.formats))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ran 5")


def test_altered_or_missing_files_and_bad_manifests_are_rejected(bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    with open(copy / "model-int8.tflite", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="does not match its sha256"):
        load_bundle(copy)
    (copy / "model-int8.tflite").unlink()
    with pytest.raises(BundleError, match="model file model-int8.tflite is missing"):
        load_bundle(copy)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for change, message in (({"schema_version": 99}, "schema_version 99 is not supported"),
                            ({"intended_use": "diagnosis"}, "intended_use"),
                            ({"output": "relu"}, "output = 'relu'"),
                            ({"decision": {"negative_classes": ["benign"], "threshold": "high",
                                           "refer_at": 0.9}}, "expected a number"),
                            ({"calibration": {"temperature": -1}}, "temperature")):
        shutil.rmtree(copy)
        shutil.copytree(bundle, copy)
        write_manifest_values(copy, manifest | change)
        with pytest.raises(BundleError, match=message):
            load_bundle(copy)
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tmp_path)


def test_wrong_input_and_wrong_files_give_clear_errors(bundle, tmp_path):
    runner = open_runner(bundle / "model-int8.tflite")
    with pytest.raises(ValueError, match="must be 128x128x3 images, got shape \\(64, 64, 3\\)"):
        runner.predict(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        runner.predict(np.zeros((1, 128, 128, 3), np.float32))
    (tmp_path / "fake.tflite").write_bytes(b"not a model")
    with pytest.raises(RuntimeProblem, match="not a TFLite model"):
        open_runner(tmp_path / "fake.tflite")
    with pytest.raises(RuntimeProblem, match="unknown model file type"):
        open_runner(bundle / "manifest.json")
    with pytest.raises(RuntimeProblem, match="has no TensorrtExecutionProvider"):
        open_runner(bundle / "model-int8.onnx",
                    RuntimeOptions(providers=("TensorrtExecutionProvider", "CPUExecutionProvider")))
    with pytest.raises(RuntimeProblem, match="is an ONNX model"):
        open_runner(bundle / "model-fp32.onnx", RuntimeOptions(runtime="litert"))


def test_builtin_kernels_give_xnnpacks_answers_without_xnnpack(bundle):
    """xnnpack=False (device config `xnnpack = false`, `--no-xnnpack`): the same probabilities, and LiteRT
    never creates its XNNPACK delegate (which would hold a second copy of the weights)."""
    x = np.random.default_rng(3).integers(0, 256, (4, 128, 128, 3), np.uint8)
    for name in ("model-int8.tflite", "model-fp32.tflite"):
        code = f"""
import numpy as np
from leukoscreen.edge.runtimes import RuntimeOptions, open_runner
runner = open_runner({str(bundle / name)!r}, RuntimeOptions(xnnpack=False))
print(runner.name)
print(*runner.predict(np.random.default_rng(3).integers(0, 256, (4, 128, 128, 3), np.uint8))[:, 1])
"""
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "XNNPACK" not in result.stderr
        runtime, probabilities = result.stdout.strip().splitlines()[-2:]
        assert runtime == "litert built-in" and open_runner(bundle / name).name == "litert"
        np.testing.assert_allclose(np.array(probabilities.split(), float), open_runner(bundle / name).predict(x)[:, 1],
                                   atol=0.02)


def test_tflite_runtime_missing_is_a_message(bundle):
    try:
        import tflite_runtime  # noqa: F401
        pytest.skip("tflite-runtime is installed here")
    except ImportError:
        pass
    with pytest.raises(RuntimeProblem, match="pip install tflite-runtime"):
        open_runner(bundle / "model-int8.tflite", RuntimeOptions(runtime="tflite-runtime"))


def test_evaluate_bundle_through_device_runtime(bundle, tmp_path):
    data = tmp_path / "other"
    rng = np.random.default_rng(5)
    for number in range(1, 6):
        write_rgb(data / "Benign" / f"WBC-Benign-{number:03d}.jpg", smear_image(rng, False))
        write_rgb(data / "Early" / f"WBC-Malignant-Early-{number:03d}.jpg", smear_image(rng, True))
    assert main(["evaluate", str(bundle), "--data", str(data), "--out", str(tmp_path / "ev"),
                 "--bootstrap", "10"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["format"] == "tflite-int8" and metrics["runtime"] == "litert"
    assert metrics["screening"]["blast"]["n"] == 5 and metrics["screening"]["non_blast"]["n"] == 5


def test_bench_prints_latency_and_ratio(bundle, tmp_path, capsys):
    assert main(["bench", str(bundle), "--threads", "1", "--runs", "5", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    models = {row["model"] for row in rows}
    assert {"tflite-int8", "onnx-fp32"} <= models
    for row in rows:
        assert "error" not in row, row
        assert row["median_ms"] > 0 and row["peak_rss_mb"] > 10
    if any(m.startswith("reference") for m in models):
        assert all("ratio_to_reference" in row for row in rows)
    assert main(["bench", str(bundle), "--threads", "1", "--runs", "5", "--no-xnnpack", "--out",
                 str(tmp_path / "builtin")]) == 0
    builtin = json.loads((tmp_path / "builtin" / "bench.json").read_text())["rows"]
    assert {row["runtime"] for row in builtin if row["model"].startswith("tflite")} == {"litert built-in"}
    assert main(["report", str(bundle.parent / "run"), "--bundles", str(bundle), "--bench",
                 str(tmp_path / "bench.json"), str(tmp_path / "builtin" / "bench.json"),
                 "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "report.md").read_text()
    assert "Converted models" in page and "| tflite-int8 |" in page and "| tflite-int8 (litert built-in) |" in page
    assert page.count("| onnx-int8 |") == 1  # a runtime timed twice gives one row
    screening = json.loads((bundle / "manifest.json").read_text())["metrics"]["tflite-int8"]["screening"]
    assert f"| {screening['sensitivity']:.3f} / {screening['specificity']:.3f} / " in page


def test_convert_errors(tmp_path, capsys):
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "b"), "--formats", "tflite-int4"]) == 2
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "b"), "--bias-correction", "-1"]) == 2
    assert "--bias-correction takes a number of images (0 turns it off)" in capsys.readouterr().err


def test_size_ratio_makes_convolutions_per_tensor_until_the_file_is_small_enough(bundle, tmp_path):
    from leukoscreen.convert.bundle_builder import ConversionError, convert_run
    metrics = json.loads((bundle / "manifest.json").read_text())["metrics"]
    if "tflite-fp32" not in metrics:
        pytest.skip("the session bundle's tflite-fp32 was left out (its features did not fit the guard)")
    per_channel = metrics["tflite-fp32"]["size_bytes"] / metrics["tflite-int8"]["size_bytes"]
    target = per_channel * 1.001  # just beyond what per-channel weights give
    manifest = convert_run(bundle.parent / "run", tmp_path / "mixed", ["tflite-int8", "tflite-fp32"],
                           representative=10, allow_drop=True, size_ratio=target)
    if "tflite-fp32" not in manifest.metrics:
        pytest.skip("this conversion's tflite-fp32 was left out (its features did not fit the guard)")
    sizes = {fmt: manifest.metrics[fmt].size_bytes for fmt in ("tflite-int8", "tflite-fp32")}
    assert sizes["tflite-fp32"] / sizes["tflite-int8"] >= target
    runner = open_runner(tmp_path / "mixed" / "model-int8.tflite")
    assert runner.input["dtype"] == np.int8 and runner.input["quantization"][0] == pytest.approx(1.0)  # 0-255 pixels
    kernels = [len(t["quantization_parameters"]["scales"]) for t in runner.interpreter.get_tensor_details()
               if len(t["shape"]) == 4 and t["dtype"] == np.int8 and t["shape"][0] > 1]
    assert 1 in kernels and max(kernels) > 1  # some convolutions per-tensor, the others still per-channel
    assert "per-tensor weights (OCTAV clipping" in manifest.files["tflite-int8"].quantization
    assert abs(manifest.metrics["tflite-int8"].accuracy_change) <= 0.2
    with pytest.raises(ValueError, match="short of 10.0x; ask for a smaller --size-ratio"):
        convert_run(bundle.parent / "run", tmp_path / "too-small", ["tflite-int8"], representative=10,
                    allow_drop=True, size_ratio=10.0)
    with pytest.raises(ConversionError, match="add tflite-int8 to --formats"):
        convert_run(bundle.parent / "run", tmp_path / "onnx", ["onnx-int8"], size_ratio=4.0)
    with pytest.raises(ConversionError, match="drop --int8-io uint8"):
        convert_run(bundle.parent / "run", tmp_path / "uint8", ["tflite-int8"], io_type="uint8", size_ratio=4.0)


def test_uint8_input_and_output_as_configured(bundle, tmp_path):
    from leukoscreen.convert.bundle_builder import convert_run
    convert_run(bundle.parent / "run", tmp_path / "u8", ["tflite-int8"], representative=20, allow_drop=True,
                io_type="uint8")
    uint8 = load_bundle(tmp_path / "u8")
    assert uint8.manifest.files["tflite-int8"].input.dtype == "uint8"
    runner = uint8.runner(RuntimeOptions(format="tflite-int8"))
    assert runner.input["dtype"] == np.uint8 and runner.output["dtype"] == np.uint8
    x = np.random.default_rng(5).integers(0, 256, (6, 128, 128, 3), np.uint8)
    np.testing.assert_allclose(runner.predict(x), load_bundle(bundle).runner(RuntimeOptions(format="tflite-int8"))
                               .predict(x), atol=0.05)


def test_onnx_export_gives_the_same_bytes_every_time(tmp_path):
    """tf2onnx alone numbers constants and the batch dimension differently on each call."""
    import keras
    import onnxruntime

    from leukoscreen.convert.exporters import to_onnx
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.Add()([keras.layers.DepthwiseConv2D(3, padding="same")(x), keras.layers.Conv2D(8, 1)(x)])
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    for name in ("a.onnx", "b.onnx"):
        to_onnx(model, tmp_path / name)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(tmp_path / "a.onnx"))
    assert session.get_inputs()[0].shape[0] == "batch"
    np.testing.assert_allclose(session.run(None, {"image": x})[0], model.predict(x, verbose=0), atol=1e-5)


def test_size_ratio_takes_the_widest_depthwise_convolution_first():
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from leukoscreen.convert.exporters import to_tflite, to_tflite_mixed
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(64, 3, activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)                # 64 channels
    x = keras.layers.Conv2D(256, 1, activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)                # 256 channels: the widest
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    float_file = to_tflite(model, "fp32")
    per_channel = len(float_file) / len(to_tflite(model, "int8", images))
    data, count = to_tflite_mixed(float_file, images, per_channel * 1.01)
    assert count == 1 and len(float_file) / len(data) >= per_channel * 1.01
    interpreter = Interpreter(model_content=data)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    scales = {(op["op_name"], int(tensors[op["inputs"][1]]["shape"][-1] if op["op_name"] == "DEPTHWISE_CONV_2D"
                                    else tensors[op["inputs"][1]]["shape"][0])):
              len(tensors[op["inputs"][1]]["quantization_parameters"]["scales"])
              for op in interpreter._get_ops_details() if "CONV" in op["op_name"]}
    assert scales == {("CONV_2D", 64): 64, ("DEPTHWISE_CONV_2D", 64): 64, ("CONV_2D", 256): 256,
                      ("DEPTHWISE_CONV_2D", 256): 1}


def test_bias_correction_brings_int8_channel_means_to_float():
    import keras
    from ai_edge_litert.interpreter import Interpreter

    from leukoscreen.convert.bias_correction import _channel_means, correct_biases
    from leukoscreen.convert.exporters import to_tflite, to_tflite_mixed
    keras.utils.set_random_seed(3)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.Conv2D(8, 1)(x)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    for layer in model.layers[2:]:  # distinct biases: a converter stores equal ones once, and those stay
        for weight in layer.weights[1:]:
            weight.assign(np.random.default_rng(1).normal(0, 0.1, weight.shape))
    images = np.random.default_rng(0).integers(0, 256, (16, 24, 24, 3), dtype=np.uint8)
    float_file = to_tflite(model, "fp32")
    logits = Interpreter(model_content=float_file).get_output_details()[0]["name"]  # the last dense layer's
    target = _channel_means(float_file, images, [logits])[logits]
    # the TF converter stores biases inside the flatbuffer, ai-edge-quantizer after it: both are corrected
    for int8_file in (to_tflite(model, "int8", images, per_channel=False), to_tflite_mixed(float_file, images, 1.0)[0]):
        corrected, layers = correct_biases(int8_file, float_file, images, progress=lambda _: None)
        assert layers == 4 and len(corrected) == len(int8_file) and corrected != int8_file
        before = np.abs(_channel_means(int8_file, images, [logits])[logits] - target).mean()
        after = np.abs(_channel_means(corrected, images, [logits])[logits] - target).mean()
        assert after < before / 2, (before, after)


def test_bias_correction_of_a_static_int8_onnx_file(tmp_path):
    import keras
    import onnx

    from leukoscreen.convert.bias_correction import _onnx_channel_means, correct_onnx_biases
    from leukoscreen.convert.exporters import quantize_onnx, to_onnx
    keras.utils.set_random_seed(3)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(16, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Conv2D(8, 1)(x)
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    for layer in model.layers[2:]:  # tf2onnx leaves out all-zero biases, and a layer without one stays as it is
        for weight in layer.weights[1:]:
            weight.assign(np.random.default_rng(1).normal(0, 0.1, weight.shape))
    images = np.random.default_rng(0).integers(0, 256, (16, 24, 24, 3), dtype=np.uint8)
    to_onnx(model, tmp_path / "fp32.onnx")
    quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", images)
    reference = onnx.load(str(tmp_path / "fp32.onnx"))
    logits = reference.graph.output[0].name
    target = _onnx_channel_means(reference, images, [logits])[logits]
    before = np.abs(_onnx_channel_means(onnx.load(str(tmp_path / "int8.onnx")), images, [logits])[logits] - target)
    assert correct_onnx_biases(tmp_path / "int8.onnx", tmp_path / "fp32.onnx", images, progress=lambda _: None) >= 2
    after = np.abs(_onnx_channel_means(onnx.load(str(tmp_path / "int8.onnx")), images, [logits])[logits] - target)
    assert after.mean() < before.mean() / 2, (before, after)


def test_per_tensor_int8_has_one_scale_per_weight_tensor(bundle, tmp_path):
    from leukoscreen.convert.bundle_builder import convert_run
    convert_run(bundle.parent / "run", tmp_path / "pt", ["tflite-int8"], representative=10, allow_drop=True,
                per_channel=False)
    runner = open_runner(tmp_path / "pt" / "model-int8.tflite")
    details = runner.interpreter.get_tensor_details()
    conv_scales = [len(t["quantization_parameters"]["scales"]) for t in details if len(t["shape"]) == 4]
    assert max(conv_scales) == 1  # convolution kernels: one scale each
    assert load_bundle(tmp_path / "pt").manifest.files["tflite-int8"].quantization.startswith(
        "full integer, per-tensor weights; biases of ")
    per_channel = load_bundle(bundle).manifest
    assert per_channel.representative_images == 20
    # the Basic CNN: 3 convolutions, 2 dense; a layer whose trained biases equal another's (the converter stores
    # them once) keeps them, which a 2-epoch training sometimes gives
    assert re.fullmatch(r"full integer, per-channel weights; biases of [45] layers corrected against float32 on 20 "
                        r"training images", per_channel.files["tflite-int8"].quantization)
    assert per_channel.files["onnx-int8"].quantization == TFLITE_DERIVED  # the tflite-int8 file's, biases included


def _decisions(bundle_path, fmt, images):
    bundle = load_bundle(bundle_path)
    manifest = bundle.manifest
    probabilities = manifest.calibration.apply(bundle.runner(RuntimeOptions(format=fmt)).predict(images))
    scores = manifest.decision.score(probabilities, manifest.class_names)
    return [(int(c), manifest.decision.decide(s).code) for c, s in zip(probabilities.argmax(axis=1), scores)]


@pytest.mark.parametrize("saturating_cpu", [False, True])
def test_onnx_int8_is_the_tflite_files_quantization_and_decides_alike(bundle, tmp_path, monkeypatch, saturating_cpu):
    """onnx-int8 is made from the int8 TFLite file (one quantization): both formats give the same decision on
    every image, also where onnxruntime must not use its fused int8 kernels (x86 without VNNI)."""
    from leukoscreen.edge import runtimes
    from leukoscreen.edge.preprocessing import preprocess
    monkeypatch.setattr(runtimes, "int8_kernels_saturate", lambda: saturating_cpu)
    manifest = load_bundle(bundle).manifest
    images = np.stack([preprocess(read_image(p), manifest.preprocess)
                       for p in sorted((bundle.parent / "data").rglob("*.jpg"))])
    tflite = load_bundle(bundle).runner(RuntimeOptions(format="tflite-int8")).predict(images)
    onnx_int8 = load_bundle(bundle).runner(RuntimeOptions(format="onnx-int8")).predict(images)
    assert np.abs(tflite - onnx_int8).max() <= 2 / 256  # a quantization step or two of the int8 output
    # the same decision, except where a score lies within those steps of the rule's boundary (a 2-epoch model's
    # threshold can sit on a quantized score)
    rule = manifest.decision
    scores = rule.score(manifest.calibration.apply(tflite), manifest.class_names)
    on_boundary = np.min(np.abs(scores[:, None] - [rule.threshold, rule.refer_at]), axis=1) <= 2 / 256
    differing = [i for i, (a, b) in enumerate(zip(_decisions(bundle, "onnx-int8", images),
                                                  _decisions(bundle, "tflite-int8", images))) if a != b]
    assert all(on_boundary[i] for i in differing) and len(differing) <= max(1, len(images) // 50), differing


def test_bundle_onnx_from_tflite_remakes_an_older_bundles_onnx_file(bundle, tmp_path, capsys):
    """An older bundle's separately quantized onnx-int8 file is made again from its tflite-int8 file, checked on
    the bundle's test part and recorded in the manifest; a wrong data folder changes nothing."""
    from leukoscreen.cli import main
    from leukoscreen.convert.exporters import quantize_onnx
    copy = tmp_path / "older"
    shutil.copytree(bundle, copy)
    from leukoscreen.edge.manifest import sha256_of
    from leukoscreen.edge.self_test import generated_fields
    quantize_onnx(bundle / "model-fp32.onnx", copy / "model-int8.onnx", np.zeros((2, 128, 128, 3), np.uint8))
    manifest = json.loads((copy / "manifest.json").read_text())
    older = open_runner(copy / "model-int8.onnx").predict(generated_fields(manifest["input"]["size"]))
    manifest["files"]["onnx-int8"] |= {"sha256": sha256_of(copy / "model-int8.onnx"),
                                       "self_test_outputs": np.round(older, 6).tolist()}
    write_manifest_values(copy, manifest)
    assert main(["bundle", "onnx-from-tflite", str(copy), "--data", str(tmp_path)]) == 2
    assert re.search(r"\d+ of the \d+ test images of .* are missing under .* or differ", capsys.readouterr().err)
    before = (copy / "model-int8.onnx").read_bytes()
    assert main(["bundle", "onnx-from-tflite", str(copy), "--data", str(bundle.parent / "data"),
                 "--bundle-version", "x" * 81]) == 2   # an invalid manifest: nothing in the bundle changes
    assert "the bundle was left as it was" in capsys.readouterr().err
    assert (copy / "model-int8.onnx").read_bytes() == before and load_bundle(copy).manifest.version != "x" * 81
    assert main(["bundle", "onnx-from-tflite", str(copy), "--data", str(bundle.parent / "data"),
                 "--bundle-version", "1.1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"onnx-int8 against tflite-int8 on \d+ test images: .* decisions differing 0", out)
    remade = load_bundle(copy)
    assert remade.manifest.version == "1.1" and remade.entry("onnx-int8").quantization == TFLITE_DERIVED
    assert (copy / "model-int8.onnx").read_bytes() == (bundle / "model-int8.onnx").read_bytes()  # reproducible
    assert remade.manifest.metrics["onnx-int8"].accuracy == load_bundle(bundle).manifest.metrics["onnx-int8"].accuracy
    assert remade.self_test("onnx-int8", remade.runner(RuntimeOptions(format="onnx-int8"))) <= 1e-5
    assert not list(copy.glob("*.new.onnx"))


def test_shipped_formats_decide_every_test_field_alike(shared_data, monkeypatch):
    """The default bundle's tflite-int8 and onnx-int8 files, through the installed LiteRT and onnxruntime, give
    the same class and decision on every field of its test part (all-aria) with onnxruntime's int8 kernels. Where those
    would saturate (x86 without VNNI) the device computes the file in float: then a borderline field may move
    between "Possible blasts" and "Indeterminate" (2 of 559 here), never to or from "No blasts suggested"."""
    from leukoscreen.edge import runtimes
    from leukoscreen.edge.preprocessing import preprocess
    from leukoscreen.training.splits import load_split
    default = REPO / "edge" / "default_bundle"
    rows = [r for r in load_split(default / "split.csv") if r.part == "test"]
    preprocess_config = load_bundle(default).manifest.preprocess
    images = np.stack([preprocess(read_image(shared_data / "all-aria" / r.path), preprocess_config) for r in rows])
    reference = _decisions(default, "tflite-int8", images)
    if not runtimes.int8_kernels_saturate():
        differing = [(r.path, a, b) for r, a, b in zip(rows, reference, _decisions(default, "onnx-int8", images))
                     if a != b]
        assert not differing, differing[:5]
    monkeypatch.setattr(runtimes, "int8_kernels_saturate", lambda: True)
    in_float = _decisions(default, "onnx-int8", images)
    differing = [(a[1], b[1]) for a, b in zip(reference, in_float) if a[1] != b[1]]
    assert len(differing) <= len(rows) // 100 and all("no_blasts" not in pair for pair in differing), differing


def _rescale_output(path, factor: float) -> None:
    """A conversion gone wrong that the hashes cannot see: the int8 ONNX file's output scale multiplied."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    initializers = {i.name: i for i in model.graph.initializer}
    last = next(node for node in model.graph.node  # the probabilities' (the guard's outputs follow them)
                if node.op_type == "DequantizeLinear" and node.output[0] == model.graph.output[0].name)
    scale = numpy_helper.to_array(initializers[last.input[1]]) * factor  # its own copy: the QuantizeLinear keeps
    model.graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), "rescaled"))  # the old one
    last.input[1] = "rescaled"
    onnx.save(model, str(path))


def test_a_file_that_computes_differently_is_refused_by_its_self_test(bundle, tmp_path, capsys):
    """Every bundle carries its files' answers on generated fields; the device compares its own before a model
    decides: a wrong file is refused with the size of the difference, another format is used, and a bundle
    with no usable format is refused."""
    from leukoscreen.edge.manifest import sha256_of
    from leukoscreen.edge.screening import ScreeningModel
    from leukoscreen.edge.self_test import SelfTestFailed
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == 3 and manifest["self_test"]["fields"] == 6
    assert load_bundle(bundle).self_test("onnx-int8", open_runner(bundle / "model-int8.onnx")) <= 1e-5
    copy = tmp_path / "copy"
    shutil.copytree(bundle, copy)
    _rescale_output(copy / "model-int8.onnx", 1.5)  # the sigmoid's probability p becomes 1.5 p
    manifest["files"]["onnx-int8"]["sha256"] = sha256_of(copy / "model-int8.onnx")  # the hash is of the bad file
    write_manifest_values(copy, manifest)
    with pytest.raises(SelfTestFailed, match=r"onnx-int8 \(model-int8.onnx\) failed its self-test through "
                                             r"onnxruntime: .* differ from the converter's by up to 0\.\d+"):
        load_bundle(copy).runner(RuntimeOptions(format="onnx-int8"))
    model = ScreeningModel.open(copy, RuntimeOptions(format="onnx-int8"))
    assert model.format == "tflite-int8" and "using tflite-int8 instead" in model.notes[-1]
    with pytest.raises(SelfTestFailed):  # a command that names the format measures that file or nothing
        ScreeningModel.open(copy, RuntimeOptions(format="onnx-int8"), fallback=False)
    from leukoscreen.cli import main
    field = str(next((bundle.parent / "data").rglob("*.jpg")))
    assert main(["classify", "--bundle", str(copy), "--format", "onnx-int8", field]) == 2
    assert "failed its self-test" in capsys.readouterr().err
    assert main(["bundle", "check", str(copy)]) == 2  # `bundle check` fails, naming the format
    assert "onnx-int8: refused" in capsys.readouterr().out
    only_onnx = manifest | {"default_format": "onnx-int8", "files": {"onnx-int8": manifest["files"]["onnx-int8"]},
                            "metrics": {k: v for k, v in manifest["metrics"].items() if k in ("keras-fp32", "onnx-int8")}}
    write_manifest_values(copy, only_onnx)
    with pytest.raises(BundleError, match="no model format of this bundle can be used here"):
        ScreeningModel.open(copy)
