"""A TFLite model file that also outputs what the unfamiliar-image guard reads: the penultimate features (the
input of the last fully connected layer) and the logits (its output, before softmax), as outputs 2 and 3
after the class probabilities. The network, its weights and its first output are not changed: only the
subgraph's list of outputs grows, so the probabilities stay bit for bit those of the original file."""
from __future__ import annotations

import tempfile
from pathlib import Path

GUARD_OUTPUTS = ("features", "logits")


class FeatureOutputError(ValueError):
    """A model whose last layers are not (features) -> fully connected -> softmax or sigmoid."""


def _op_names() -> dict[int, str]:
    from tensorflow.lite.python import schema_py_generated as schema
    return {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


def with_feature_outputs(tflite: bytes) -> bytes:
    """`tflite` with the features and logits as extra outputs (already there: returned as it is)."""
    from tensorflow.lite.tools import flatbuffer_utils

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "model.tflite"
        source.write_bytes(tflite)
        model = flatbuffer_utils.read_model(str(source))
        if len(model.subgraphs) != 1:
            raise FeatureOutputError(f"{len(model.subgraphs)} subgraphs; only single-graph models get a guard")
        graph = model.subgraphs[0]
        outputs = [int(i) for i in graph.outputs]
        if len(outputs) == 1 + len(GUARD_OUTPUTS):
            return tflite
        if len(outputs) != 1:
            raise FeatureOutputError(f"{len(outputs)} outputs; expected the class probabilities only")
        names = _op_names()
        producer = {int(t): op for op in graph.operators for t in op.outputs}

        def op_name(op) -> str:
            code = model.operatorCodes[op.opcodeIndex]
            return names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")

        last = producer.get(outputs[0])
        if last is None or op_name(last) not in ("SOFTMAX", "LOGISTIC"):
            raise FeatureOutputError("the output is not made by a softmax or sigmoid; no logits to read")
        logits = int(last.inputs[0])
        dense = producer.get(logits)
        if dense is None or op_name(dense) != "FULLY_CONNECTED":
            raise FeatureOutputError("the logits are not made by a fully connected layer; no features to read")
        features = int(dense.inputs[0])
        graph.outputs = [outputs[0], features, logits]
        target = Path(tmp) / "guarded.tflite"
        flatbuffer_utils.write_model(model, str(target))
        return target.read_bytes()


PASS_THROUGH = {"QuantizeLinear", "DequantizeLinear", "Identity", "Reshape", "Flatten", "Squeeze"}


def onnx_with_feature_outputs(path: Path) -> None:
    """The same for an ONNX file (from Keras by tf2onnx, or its QDQ quantization), in place: the input of the
    last Gemm or MatMul (features) and the input of the final Softmax or Sigmoid (logits) become outputs 2 and
    3, with quantize/dequantize pairs and reshapes between them passed through."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    if len(graph.output) == 1 + len(GUARD_OUTPUTS):
        return
    if len(graph.output) != 1:
        raise FeatureOutputError(f"{path.name}: {len(graph.output)} outputs; expected the class probabilities only")
    producer = {name: node for node in graph.node for name in node.output}

    def source(name: str):
        node = producer.get(name)
        while node is not None and node.op_type in PASS_THROUGH:
            name, node = node.input[0], producer.get(node.input[0])
        return name, node

    _, last = source(graph.output[0].name)
    if last is None or last.op_type not in ("Softmax", "Sigmoid"):
        raise FeatureOutputError(f"{path.name}: the output is not made by a softmax or sigmoid; no logits to read")
    logits, dense = source(last.input[0])
    if dense is not None and dense.op_type == "Add":   # MatMul + bias
        dense = next((producer[i] for i in dense.input if i in producer and producer[i].op_type == "MatMul"), None)
    if dense is None or dense.op_type not in ("Gemm", "MatMul"):
        raise FeatureOutputError(f"{path.name}: the logits are not made by a dense layer; no features to read")
    features, _ = source(dense.input[0])
    graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                        for name in (features, logits))
    onnx.save(model, str(path))
