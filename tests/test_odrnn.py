"""ODRNN: HSV-masked input, the recurrent network, its conversion without Flex ops, and the search's log
and resumption."""
import json
from pathlib import Path

import numpy as np
import pytest

from leukoscreen.cli import main
from leukoscreen.training.odrnn_search import DEFAULT, run_search


def test_odrnn_trains_on_masked_rows_and_converts_without_flex(aria_like, tmp_path):
    from leukoscreen.convert.bundle_builder import convert_run
    from leukoscreen.edge.runtimes import RuntimeOptions
    from leukoscreen.edge.screening import ScreeningModel, screen
    from leukoscreen.edge.synthetic_smear import synthetic_field
    run = tmp_path / "run"
    assert main(["train", "--data", str(aria_like), "--model", "odrnn", "--model-option", "cell=gru",
                 "--model-option", "bidirectional=true", "--model-option", "sequence=cnn", "--epochs", "1",
                 "--batch-size", "8", "--block-size", "3", "--bootstrap", "10", "--out", str(run)]) == 0
    config = json.loads((run / "config.json").read_text())["train"]
    assert config["model_options"] == {"cell": "gru", "bidirectional": True, "sequence": "cnn"}
    assert config["preprocess"]["hsv_lower"] == [118, 65, 0] and config["preprocess"]["input_size"] == 64
    convert_run(run, tmp_path / "bundle", ["tflite-int8", "onnx-fp32", "onnx-int8"], representative=10,
                allow_drop=True)
    import onnx
    ops = {node.op_type for node in onnx.load(tmp_path / "bundle" / "model-int8.onnx").graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops, ops
    for fmt in ("tflite-int8", "onnx-fp32", "onnx-int8"):  # each checked for Flex ops and run by the device runtime
        result = screen(synthetic_field(1).image, ScreeningModel.open(tmp_path / "bundle", RuntimeOptions(format=fmt)))
        assert result.decision != "retake" and sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-3)


class FakeEvaluator:
    """Scores configurations without training: best with GRU, 2 layers, about 96 units."""
    task = "subtype"

    def __init__(self):
        self.calls = 0

    def __call__(self, params):
        self.calls += 1
        return float(np.clip(1 - abs(params["units"] - 96) / 200 - 0.2 * (params["cell"] != "gru")
                             - 0.1 * abs(params["layers"] - 2), 0, 1))


def test_search_logs_every_evaluation_and_resumes_where_it_stopped(tmp_path):
    first = FakeEvaluator()
    summary = run_search("data", tmp_path / "s", "rda", budget=24, seed=1, evaluator=first, final_epochs=0)
    lines = (tmp_path / "s" / "evaluations.jsonl").read_text().splitlines()
    assert first.calls == 24 and len(lines) == 24 and summary["evaluations"] == 24
    assert summary["best_val_macro_f1"] == max(json.loads(line)["val_macro_f1"] for line in lines)
    # stop after 10 evaluations: keep the first 10 lines of the log, then resume
    (tmp_path / "s" / "evaluations.jsonl").write_text("\n".join(lines[:10]) + "\n")
    again = FakeEvaluator()
    resumed = run_search("data", tmp_path / "s", "rda", budget=24, seed=1, evaluator=again, final_epochs=0)
    assert again.calls == 14 and resumed["best_params"] == summary["best_params"]
    assert (tmp_path / "s" / "evaluations.jsonl").read_text().splitlines() == lines
    with pytest.raises(ValueError, match="other settings"):
        run_search("data", tmp_path / "s", "random", budget=24, seed=1, evaluator=again, final_epochs=0)
    default = run_search("data", tmp_path / "d", "default", budget=24, evaluator=FakeEvaluator(), final_epochs=0)
    assert default["evaluations"] == 1 and default["best_params"] == DEFAULT and default["task"] == "subtype"
    from leukoscreen.training.report import ablation_rows, search_row
    assert search_row(tmp_path / "s")["method"] == "rda" and search_row(tmp_path / "d")["evaluations"] == 1
    other_seed = run_search("data", tmp_path / "s2", "rda", budget=24, seed=2, evaluator=FakeEvaluator(), final_epochs=0)
    rows = {row["method"]: row for row in ablation_rows([tmp_path / "s", tmp_path / "s2", tmp_path / "d"])}
    values = sorted([summary["best_val_macro_f1"], other_seed["best_val_macro_f1"]])
    assert rows["rda"]["seeds"] == 2 and rows["default"]["seeds"] == 1 and rows["rda"]["each evaluation"] == "10 epochs"
    balanced = run_search("data", tmp_path / "b", "rda", budget=24, seed=2, evaluator=FakeEvaluator(), final_epochs=0,
                          balanced_validation=True)
    assert json.loads((tmp_path / "b" / "search.json").read_text())["balanced_validation"] is True
    kinds = {row["each evaluation"] for row in ablation_rows([tmp_path / "s", tmp_path / "b"])}
    assert kinds == {"10 epochs", "10 epochs, balanced validation"} and balanced["task"] == "subtype"
    assert rows["rda"]["best validation macro-F1, mean (range)"] == (
        f"{np.mean(values):.3f} ({values[0]:.3f}-{values[1]:.3f})")


@pytest.mark.parametrize("arguments, message", [
    ({"method": "annealing"}, "method 'annealing'"),
    ({"method": "rda", "budget": 3}, "at least its population"),
    ({"epochs": 0}, "epochs 0"),
])
def test_impossible_search_settings_stop_before_training(tmp_path, arguments, message):
    evaluator = FakeEvaluator()
    with pytest.raises(ValueError, match=message):
        run_search("data", tmp_path / "x", evaluator=evaluator, final_epochs=0, **arguments)
    assert evaluator.calls == 0


def test_rda_adjusts_the_output_layer_on_validation_data(aria_like, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(aria_like), "--task", "binary", "--epochs", "2", "--batch-size", "8",
                 "--block-size", "3", "--bootstrap", "10", "--out", str(run)]) == 0
    assert main(["tune-head", str(run), "--budget", "60", "--out", str(tmp_path / "tuned")]) == 0
    summary = json.loads((tmp_path / "tuned" / "head_tuning.json").read_text())
    assert summary["val_macro_f1_after"] >= summary["val_macro_f1_before"]  # the trained weights are the floor
    assert json.loads((tmp_path / "tuned" / "metrics.json").read_text())["macro_f1"] == summary["test_macro_f1_after"]


def test_search_trains_real_configurations_and_leaves_float32(tmp_path):
    import keras

    from conftest import smear_image, write_rgb
    rng = np.random.default_rng(0)
    data = tmp_path / "aria"
    for number in range(20, 260, 20):  # one image per block of 20 file numbers: 12 groups per class
        write_rgb(data / "Benign" / f"WBC-Benign-{number:03d}.jpg", smear_image(rng, False))
        write_rgb(data / "Early" / f"WBC-Malignant-Early-{number:03d}.jpg", smear_image(rng, True))
    out = tmp_path / "search"
    assert main(["search", "--data", str(data), "--method", "random", "--budget", "2", "--epochs", "1",
                 "--final-epochs", "0", "--balanced-validation", "--out", str(out)]) == 0
    scores = [json.loads(line)["val_macro_f1"] for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert len(scores) == 2 and all(0.0 <= score <= 1.0 for score in scores)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "subtype" and summary["balanced_validation"] is True
    assert keras.mixed_precision.global_policy().name == "float32"


def test_deterministic_search_turns_on_tensorflow_op_determinism(tmp_path):
    """Op determinism is process-wide, so the search runs in its own process."""
    import subprocess
    import sys
    script = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from tensorflow.python.framework.config import is_op_determinism_enabled\n"
        "from pathlib import Path\n"
        "from test_odrnn import FakeEvaluator\n"
        "from leukoscreen.training.odrnn_search import run_search\n"
        "before = is_op_determinism_enabled()\n"
        f"run_search('data', Path({str(tmp_path / 's')!r}), 'default', evaluator=FakeEvaluator(), final_epochs=0,"
        " deterministic=True)\n"
        "print(before, is_op_determinism_enabled())\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-2:] == ["False", "True"]
    assert json.loads((tmp_path / "s" / "search.json").read_text())["deterministic"] is True
