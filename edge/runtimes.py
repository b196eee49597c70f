"""Device runtimes behind one small interface: LiteRT (preferred), tflite-runtime (legacy boards) and
onnxruntime. A runner takes preprocessed uint8 images (N x S x S x 3) and returns class probabilities, and
with them the features and logits of a file that outputs them (for the unfamiliar-image guard).

No tensorflow here: the runtimes are imported only when a model of their kind is opened.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np

Runtime = Literal["auto", "litert", "tflite-runtime", "onnx"]
RUNTIMES = get_args(Runtime)
TFLITE_BACKENDS = ("litert", "tflite-runtime")


class RuntimeProblem(ValueError):
    """A runtime that is missing or cannot run a model file; the message says what to do."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How the device runs a bundle's model: one object handed to the runtime whole.

    format: the bundle's model format to use (None: the bundle's default format).
    runtime: "auto" picks LiteRT for .tflite (falling back to tflite-runtime) and onnxruntime for .onnx.
    threads: intra-op threads of the runtime.
    providers: onnxruntime execution providers in order of preference (empty: CPU).
    xnnpack: False runs TFLite files on the runtime's built-in kernels (see TFLiteRunner).
    """
    format: str | None = None
    runtime: Runtime = "auto"
    threads: int = 2
    providers: tuple[str, ...] = ()
    xnnpack: bool = True

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise RuntimeProblem(f"unknown runtime {self.runtime!r}; use one of {', '.join(RUNTIMES)}")
        if self.threads < 1:
            raise RuntimeProblem(f"threads = {self.threads}: use 1 or more")
        object.__setattr__(self, "providers", tuple(self.providers))

    def with_format(self, fmt: str | None) -> "RuntimeOptions":
        return replace(self, format=fmt)


def _import_tflite_interpreter(backend: str):
    """The backend's `interpreter` module (its Interpreter and OpResolverType)."""
    if backend == "litert":
        try:
            from ai_edge_litert import interpreter
        except ImportError as error:
            raise RuntimeProblem("LiteRT is not installed: pip install ai-edge-litert "
                                 "(or choose --runtime tflite-runtime or onnx)") from error
        return interpreter
    if backend == "tflite-runtime":
        try:
            from tflite_runtime import interpreter
        except ImportError as error:
            raise RuntimeProblem("tflite-runtime is not installed: pip install tflite-runtime 'numpy<2' "
                                 f"(it failed with: {error})") from error
        return interpreter
    raise RuntimeProblem(f"unknown TFLite runtime {backend!r}; use one of {', '.join(TFLITE_BACKENDS)}")


def to_probabilities(output: np.ndarray) -> np.ndarray:
    """N x K probabilities from a model output: one sigmoid column becomes [1 - p, p]; softmax rows are
    re-normalised to sum to 1 (dequantised int8 outputs are off by up to a quantisation step)."""
    output = np.clip(np.asarray(output, dtype=np.float64), 0.0, 1.0)
    if output.shape[1] == 1:
        return np.hstack([1.0 - output, output])
    return output / np.maximum(output.sum(axis=1, keepdims=True), 1e-12)


def tflite_input(pixels: np.ndarray, details: dict) -> np.ndarray:
    """uint8 pixels in the type of a TFLite input tensor (`details`: the interpreter's input details):
    float32 as they are, int8 or uint8 through the tensor's scale and zero point."""
    x = pixels.astype(np.float32)
    if details["dtype"] in (np.int8, np.uint8):
        scale, zero_point = details["quantization"]
        info = np.iinfo(details["dtype"])
        x = np.clip(np.rint(x / scale + zero_point), info.min, info.max)
    return x.astype(details["dtype"])


class ModelRunner:
    """Base: checks inputs and turns raw outputs into probabilities. Subclasses implement `_run`."""
    input_size: int
    output_size: int | None   # numbers per image (None: not fixed in the file)
    input_spec: tuple[str, float, int]   # the input tensor's type, scale and zero point
    name: str
    self_test_difference: float | None = None   # set by ModelBundle.runner: its self-test's largest difference

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Every output of the file, in its order, one row per image."""
        raise NotImplementedError

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities (N x K) for preprocessed uint8 images (N x S x S x 3)."""
        return to_probabilities(self.outputs(images))

    def predict_all(self, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Class probabilities and the file's further outputs (features, logits; none for most files)."""
        first, *rest = self.all_outputs(images)
        return to_probabilities(first), [np.asarray(r, np.float32).reshape(len(r), -1) for r in rest]

    def outputs(self, images: np.ndarray) -> np.ndarray:
        """The model's first raw output (N x K scores, or N x F features) for preprocessed uint8 images."""
        return self.all_outputs(images)[0]

    def all_outputs(self, images: np.ndarray) -> list[np.ndarray]:
        """Every raw output of the model file for preprocessed uint8 images."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        expected = (self.input_size, self.input_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            raise ValueError(f"model input must be {expected[0]}x{expected[1]}x3 images, got shape "
                             f"{images.shape[1:] if images.ndim == 4 else images.shape}; "
                             "preprocess with the bundle's parameters first")
        if images.dtype != np.uint8:
            raise ValueError(f"model input must be uint8 pixels, got {images.dtype}")
        return self._run(images)


def _fixed(dimension) -> int | None:
    return dimension if isinstance(dimension, int) else None


class TFLiteRunner(ModelRunner):
    """xnnpack=False runs the runtime's built-in kernels instead of its default XNNPACK delegate: several
    times slower, but XNNPACK keeps a second, repacked copy of the weights in memory, which a large model
    (AlexNet: 57 MB int8) cannot afford on a small board."""

    def __init__(self, path: Path, backend: str = "litert", threads: int = 2, xnnpack: bool = True,
                 content: bytes | None = None):
        module = _import_tflite_interpreter(backend)
        self.name = backend if xnnpack else f"{backend} built-in"
        options = {} if xnnpack else {
            "experimental_op_resolver_type": module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
        try:
            # the file's bytes, held in memory (not mapped): a file changed on disk cannot change the model
            self.model_content = content if content is not None else Path(path).read_bytes()
            self.interpreter = module.Interpreter(model_content=self.model_content, num_threads=threads, **options)
        except (ValueError, RuntimeError) as error:
            text = str(error)
            if "Flex" in text or "Select TensorFlow op" in text:
                raise RuntimeProblem(f"{path}: needs TensorFlow (Flex) ops, which no device runtime has; "
                                     "convert it again without Select-TF ops") from error
            if "Didn't find op" in text:
                raise RuntimeProblem(f"{path}: {backend} is too old for an operator version in this file "
                                     f"({text.strip().splitlines()[0]}); use ai-edge-litert or the ONNX "
                                     "model") from error
            raise RuntimeProblem(f"{path}: not a TFLite model {backend} can load ({text})") from error
        flex = sorted({op["op_name"] for op in self.interpreter._get_ops_details()
                       if "Flex" in op["op_name"]})
        if flex:
            raise RuntimeProblem(f"{path}: contains TensorFlow (Flex) ops {', '.join(flex)}, which no "
                                 "device runtime can run; convert it again without Select-TF ops")
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()
        self.output = self.output_details[0]
        self.input_size = int(self.input["shape"][1])
        self.output_size = int(self.output["shape"][-1])
        scale, zero_point = self.input["quantization"]
        self.input_spec = (np.dtype(self.input["dtype"]).name, float(scale) or 1.0, int(zero_point))

    def _dequantized(self, details: dict) -> np.ndarray:
        y = self.interpreter.get_tensor(details["index"]).astype(np.float32)
        scale, zero_point = details["quantization"]
        return (y - zero_point) * scale if details["dtype"] in (np.int8, np.uint8) else y

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        rows = []
        for image in batch:  # one image at a time: valid for every model, including batch-1 RNN files
            self.interpreter.set_tensor(self.input["index"], tflite_input(image[None], self.input))
            self.interpreter.invoke()
            rows.append([self._dequantized(details)[0] for details in self.output_details])
        return [np.stack(column) for column in zip(*rows)]


def int8_kernels_saturate() -> bool:
    """True on x86 CPUs without VNNI: there onnxruntime's fused int8 convolutions multiply 8-bit pairs with
    VPMADDUBSW, which saturates at 16 bits when the weights use the full int8 range (a TFLite-derived file)."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # cannot tell: compute safely
    return re.search(r"\b(avx512_vnni|avx_vnni)\b", flags) is None


class OnnxRunner(ModelRunner):
    def __init__(self, path: Path, threads: int = 2, providers: list[str] | None = None,
                 content: bytes | None = None):
        try:
            import onnxruntime
        except ImportError as error:
            raise RuntimeProblem("onnxruntime is not installed: pip install onnxruntime") from error
        self.name = "onnxruntime"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if int8_kernels_saturate():  # QDQ files then run as float arithmetic on their int8 values
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        available = onnxruntime.get_available_providers()
        wanted = providers or ["CPUExecutionProvider"]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise RuntimeProblem(f"onnxruntime here has no {', '.join(missing)}; available: {', '.join(available)}")
        try:
            self.session = onnxruntime.InferenceSession(content if content is not None else Path(path).read_bytes(),
                                                        options, providers=wanted)
        except Exception as error:  # onnxruntime raises its own exception types
            raise RuntimeProblem(f"{path}: not an ONNX model onnxruntime can load ({error})") from error
        self.input = self.session.get_inputs()[0]
        self.input_size = int(self.input.shape[1])
        self.output_size = _fixed(self.session.get_outputs()[0].shape[-1])
        self.input_spec = ({"tensor(float)": "float32"}.get(self.input.type, self.input.type), 1.0, 0)

    def _run(self, batch: np.ndarray, chunk: int = 16) -> list[np.ndarray]:
        # a few images per call: a whole data set at once would hold every layer's activations for all of it
        chunks = [self.session.run(None, {self.input.name: batch[i:i + chunk].astype(np.float32)})
                  for i in range(0, len(batch), chunk)]
        return [np.concatenate(column) for column in zip(*chunks)]


class TwoStageRunner(ModelRunner):
    """Thesis Model 1 on the device: a feature-extractor model, then a classical classifier (scikit-learn,
    converted to ONNX by skl2onnx) that turns the features into class probabilities."""

    def __init__(self, features: ModelRunner, classifier: Path, threads: int = 1, content: bytes | None = None):
        self.features = features
        self.classifier = OnnxRunner(classifier, threads, content=content)
        self.name = f"{features.name} + onnxruntime"
        self.input_size = features.input_size
        if len(self.classifier.session.get_outputs()) != 2:
            raise RuntimeProblem(f"{classifier}: a classifier needs the outputs (label, probabilities); "
                                 "convert it with skl2onnx and zipmap off")
        self.output_size = _fixed(self.classifier.session.get_outputs()[1].shape[-1])  # (label, probabilities)
        self.input_spec = features.input_spec

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The classifier's probabilities, then the features they were computed from."""
        features = np.asarray(self.features._run(batch)[0], dtype=np.float32).reshape(len(batch), -1)
        width = self.classifier.input_size
        if features.shape[1] != width:
            raise RuntimeProblem(f"the feature model gives {features.shape[1]} numbers per image but the "
                                 f"classifier expects {width}; the bundle's files do not belong together")
        return [self.classifier.session.run(None, {self.classifier.input.name: features})[1], features]


def open_runner(path: str | Path, options: RuntimeOptions = RuntimeOptions(),
                classifier: str | Path | None = None, contents: dict[Path, bytes] | None = None) -> ModelRunner:
    """A runner for a .tflite or .onnx file with the given runtime options (`options.format` is the
    bundle's business and is not read here). With `classifier` (an ONNX classifier file) the model file
    is a feature extractor and the classifier turns its features into probabilities. `contents`: the files'
    bytes already read (and checked against their hashes); otherwise they are read here. Either way the
    runtime works from bytes in memory, never from a file that could change under it."""
    contents = contents or {}
    if classifier is not None:
        return TwoStageRunner(open_runner(path, options, contents=contents), Path(classifier),
                              content=contents.get(Path(classifier)))
    path, runtime = Path(path), options.runtime
    if not path.is_file() and path not in contents:
        raise RuntimeProblem(f"model file {path} does not exist")
    content = contents.get(path)
    if path.suffix == ".onnx":
        if runtime not in ("auto", "onnx"):
            raise RuntimeProblem(f"{path.name} is an ONNX model; runtime {runtime!r} cannot run it (use onnx)")
        return OnnxRunner(path, options.threads, list(options.providers) or None, content)
    if path.suffix != ".tflite":
        raise RuntimeProblem(f"{path.name}: unknown model file type (expected .tflite or .onnx)")
    if runtime == "onnx":
        raise RuntimeProblem(f"{path.name} is a TFLite model; use runtime litert or tflite-runtime")
    if runtime == "auto":
        try:
            return TFLiteRunner(path, "litert", options.threads, options.xnnpack, content)
        except RuntimeProblem as error:
            if "not installed" not in str(error):
                raise
            runtime = "tflite-runtime"
    return TFLiteRunner(path, runtime, options.threads, options.xnnpack, content)
