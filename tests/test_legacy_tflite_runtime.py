"""tflite-runtime 2.14 (legacy boards) in its own virtual environment with numpy<2, as on such a board:
the int8 and float files run, with XNNPACK and with the built-in kernels alike; a dynamic-range file made by
TF 2.21 is refused with a clear message."""
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIMES = Path(__file__).resolve().parent.parent / "edge" / "runtimes.py"
CHECK = """
import importlib.util, json, sys
import numpy as np
spec = importlib.util.spec_from_file_location("runtimes", sys.argv[1])
runtimes = importlib.util.module_from_spec(spec)
sys.modules["runtimes"] = runtimes  # a module loaded by path is registered before it runs (dataclasses)
spec.loader.exec_module(runtimes)
out = {}
for path in sys.argv[2:]:
    try:
        runner = runtimes.open_runner(path, runtimes.RuntimeOptions(runtime="tflite-runtime"))
        x = np.random.default_rng(0).integers(0, 256, (1, runner.input_size, runner.input_size, 3), np.uint8)
        p = runner.predict(x)
        out[path.rsplit("/", 1)[1]] = "ok %.3f" % p.sum()
        builtin = runtimes.open_runner(path, runtimes.RuntimeOptions(runtime="tflite-runtime", xnnpack=False))
        same = np.abs(builtin.predict(x) - p).max() < 0.02 and builtin.name == "tflite-runtime built-in"
        out[path.rsplit("/", 1)[1] + " built-in"] = "same" if same else "differs"
    except runtimes.RuntimeProblem as error:
        out[path.rsplit("/", 1)[1]] = str(error)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def legacy_python(tmp_path_factory):
    venv = tmp_path_factory.mktemp("legacy") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "tflite-runtime==2.14.0", "numpy<2"],
                             capture_output=True, text=True)
    if install.returncode != 0:
        pytest.skip(f"tflite-runtime 2.14 cannot be installed here: {install.stderr.strip()[-300:]}")
    return venv / "bin" / "python"


def test_legacy_runtime_runs_int8_and_explains_new_op_versions(legacy_python, bundle):
    import json
    files = [str(bundle / name) for name in ("model-int8.tflite", "model-fp32.tflite", "model-dynamic.tflite")]
    result = subprocess.run([str(legacy_python), "-c", CHECK, str(RUNTIMES), *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["model-int8.tflite"] == "ok 1.000"
    assert outcome["model-fp32.tflite"] == "ok 1.000"
    assert outcome["model-int8.tflite built-in"] == outcome["model-fp32.tflite built-in"] == "same"
    assert "too old for an operator version" in outcome["model-dynamic.tflite"]
    assert "use ai-edge-litert or the ONNX model" in outcome["model-dynamic.tflite"]


def test_legacy_runtime_runs_the_shipped_default_bundle(legacy_python):
    import json
    default = Path(__file__).resolve().parent.parent / "edge" / "default_bundle" / "model-int8.tflite"
    result = subprocess.run([str(legacy_python), "-c", CHECK, str(RUNTIMES), str(default)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"model-int8.tflite": "ok 1.000",
                                                                   "model-int8.tflite built-in": "same"}
