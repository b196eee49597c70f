"""Keras model -> TFLite (float32, dynamic-range, full int8) and ONNX (float32, static int8 QDQ) files."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

OUTPUT_NAMES = ("probabilities", "features", "logits")  # the guard's two follow the probabilities


def to_tflite(model, mode: str, representative: np.ndarray | None = None, io_type: str = "int8",
              per_channel: bool = True) -> bytes:
    """TFLite flatbuffer of a Keras model. mode: "fp32", "dynamic" or "int8" (full integer, needs
    `representative`: uint8 training images). io_type: "int8" or "uint8" input/output for full int8.
    per_channel=False quantizes each weight tensor with one scale (smaller files, usually less accurate)."""
    import tensorflow as tf
    if mode not in ("fp32", "dynamic", "int8"):
        raise ValueError(f"unknown TFLite mode {mode!r}; use fp32, dynamic or int8")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "int8":
        if representative is None or len(representative) == 0:
            raise ValueError("full int8 conversion needs representative training images")

        def samples():
            for image in representative:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        dtype = {"int8": tf.int8, "uint8": tf.uint8}[io_type]
        converter.inference_input_type = dtype
        converter.inference_output_type = dtype
        # TF 2.21 has no public switch; convolutions and dense layers have one flag each
        converter._experimental_disable_per_channel = not per_channel
        converter._experimental_disable_per_channel_quantization_for_dense_layers = not per_channel
    return converter.convert()


def to_tflite_mixed(float_tflite: bytes, representative: np.ndarray, size_ratio: float) -> tuple[bytes, int]:
    """Full int8 TFLite at least `size_ratio` times smaller than `float_tflite`, by ai-edge-quantizer.

    Per-channel int8 stores a scale and a zero point (12 bytes) for every output channel of every convolution,
    for its weights and again for its bias. Depthwise kernels hold only 9 or 25 weights per channel, so in
    networks such as EfficientNet-Lite0 these parameters keep the file near 3.4x smaller than float32. Here
    convolutions get one scale per tensor instead (with OCTAV's MSE-optimal clipping), depthwise first and
    widest first, until the file is small enough; every other weight stays per-channel. Activations are
    calibrated on `representative` (uint8 training images); the input keeps the full 0-255 pixel range.
    Returns the file and how many convolutions have per-tensor weights."""
    from ai_edge_litert.interpreter import Interpreter
    try:
        from ai_edge_quantizer import qtyping, quantizer
    except ImportError as error:
        raise ValueError("a size ratio needs ai-edge-quantizer (Python < 3.13): pip install ai-edge-quantizer, "
                         "or convert without --size-ratio") from error

    interpreter = Interpreter(model_content=float_tflite)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    convolutions = []  # (not depthwise, -channels, scope: the op's output names, as ai-edge-quantizer matches)
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            depthwise = op["op_name"] == "DEPTHWISE_CONV_2D"
            channels = tensors[op["inputs"][1]]["shape"][-1 if depthwise else 0]
            scope = "".join(tensors[i]["name"] + ";" for i in op["outputs"])
            convolutions.append((not depthwise, -int(channels), op["op_name"], scope))
    convolutions.sort()

    def quantizer_for(per_tensor):
        recipe = quantizer.Quantizer(float_tflite)
        recipe.add_static_config(".*", "*", 8, 8, qtyping.QuantGranularity.CHANNELWISE)
        for *_, op_name, scope in per_tensor:
            recipe.add_static_config(f"^{re.escape(scope)}$", op_name, 8, 8, qtyping.QuantGranularity.TENSORWISE,
                                     algorithm_key="OCTAV")
        return recipe

    signature, names = next(iter(interpreter.get_signature_list().items()))
    samples = [{names["inputs"][0]: image[None].astype(np.float32)} for image in representative]
    ranges = quantizer_for([]).calibrate({signature: samples}, num_threads=os.cpu_count() or 1)
    pixels = ranges[interpreter.get_input_details()[0]["name"]]
    pixels["min"], pixels["max"] = np.zeros_like(pixels["min"]), np.full_like(pixels["max"], 255.0)
    for count in range(len(convolutions) + 1):
        data = bytes(quantizer_for(convolutions[:count]).quantize(ranges, enable_progress_bar=False,
                                                                    enable_progress_report=False).quantized_model)
        if len(float_tflite) / len(data) >= size_ratio:
            return data, count
    raise ValueError(f"int8 TFLite reaches only {len(float_tflite) / len(data):.2f}x smaller than float32 with every "
                     f"convolution per-tensor, short of {size_ratio}x; ask for a smaller --size-ratio")


def to_onnx(model, path: Path, opset: int = 17) -> None:
    """ONNX file of a Keras model (NHWC float32 input named "image") with tf2onnx."""
    import tensorflow as tf
    import tf2onnx
    size = model.input_shape[1:]
    signature = (tf.TensorSpec((None, *size), tf.float32, name="image"),)
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset, output_path=str(path))
    make_reproducible(path)


def tflite_to_onnx(tflite: Path, path: Path, opset: int = 17) -> None:
    """ONNX file of a full-int8 TFLite file with the same quantization (tf2onnx's TFLite front end: every int8
    tensor becomes a QuantizeLinear/DequantizeLinear pair with the TFLite file's scale and zero point), so
    that both formats compute one quantized network instead of two calibrated apart. The input becomes
    float32 pixels (0-255, named "image"), quantized in the graph as the device quantizes a TFLite input;
    the outputs are dequantized to floats (probabilities, and the guard's features and logits when the TFLite
    file has them). Tensor names are replaced by numbers first: tf2onnx
    loses tensors whose TFLite names join several op names with ';'."""
    import tempfile

    import onnx
    import tf2onnx
    from onnx import helper, numpy_helper
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(tflite))
    if len(model.subgraphs) != 1:
        raise ValueError(f"{tflite}: {len(model.subgraphs)} subgraphs; only single-graph models are converted")
    subgraph = model.subgraphs[0]
    (inp,), outputs = subgraph.inputs, list(subgraph.outputs)
    names = ["input", *OUTPUT_NAMES[:len(outputs)]]
    if len(outputs) > len(OUTPUT_NAMES):
        raise ValueError(f"{tflite}: {len(outputs)} outputs; expected the probabilities and at most the guard's "
                         "features and logits")
    quantized = {}
    for name, index in zip(names, [inp, *outputs]):
        tensor = subgraph.tensors[index]
        q = tensor.quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            raise ValueError(f"{tflite}: the {name} is not a per-tensor int8 tensor; convert a full-int8 file")
        quantized[name] = (float(q.scale[0]), int(q.zeroPoint[0]), tensor.type)
    for i, tensor in enumerate(subgraph.tensors):
        tensor.name = f"t{i}".encode()
    with tempfile.TemporaryDirectory() as tmp:
        renamed = Path(tmp) / "renamed.tflite"
        flatbuffer_utils.write_model(model, str(renamed))
        proto, _ = tf2onnx.convert.from_tflite(str(renamed), opset=opset)
    graph = proto.graph
    elem = {9: onnx.TensorProto.INT8, 3: onnx.TensorProto.UINT8}   # TFLite TensorType codes
    dtypes = {name: elem.get(t) for name, (_, _, t) in quantized.items()}
    if None in dtypes.values():
        raise ValueError(f"{tflite}: input and outputs must be int8 or uint8 tensors")
    numpy_type = {onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8}
    by_name = {value.name: value for value in graph.output}
    old_outputs = [by_name[f"t{index}"] for index in outputs]   # in the TFLite file's order
    old_in = graph.input[0].name
    constants = []
    for name, (scale, zero, _) in quantized.items():
        constants += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_scale"),
                      numpy_helper.from_array(np.array(zero, numpy_type[dtypes[name]]), f"{name}_zero_point")]
    graph.initializer.extend(constants)
    graph.node.insert(0, helper.make_node("QuantizeLinear", ["image", "input_scale", "input_zero_point"], [old_in]))
    new_outputs = []
    for name, old in zip(names[1:], old_outputs):
        graph.node.append(helper.make_node("DequantizeLinear", [old.name, f"{name}_scale", f"{name}_zero_point"],
                                           [name]))
        new_outputs.append(helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, ["batch", *(d.dim_value for d in old.type.tensor_type.shape.dim[1:])]))
    image_dims = graph.input[0].type.tensor_type.shape.dim[1:]
    new_in = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT,
                                           ["batch", *(d.dim_value for d in image_dims)])
    del graph.input[:], graph.output[:]
    graph.input.append(new_in)
    graph.output.extend(new_outputs)
    onnx.save(proto, str(path))
    make_reproducible(path)


def make_reproducible(path: Path) -> None:
    """Rewrite an ONNX file so that the same network always gives the same bytes: tf2onnx orders parallel
    nodes, numbers folded constants, stores and shares equal constants and repeats some operations differently
    from run to run. Constants are stored once each, by value; an operation repeated on the same inputs is
    computed once; nodes are put in a topological order whose ties are broken by what each node computes (operator, attributes,
    inputs), then named by position (`Conv_12`, its outputs `Conv_12_0`, its weights `Conv_12_in1`); the
    graph's inputs and outputs keep their names and the first free dimension is called "batch"; the shape
    annotations are inferred again and the result checked (onnx.checker). Files with Loop or If nodes are left
    as they are."""
    import heapq
    import hashlib

    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(path))
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return  # Loop/If bodies refer to outer names; such files are left as they are

    def digest(*parts: str) -> str:
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    # initializers by value, stored one way and once (tf2onnx stores equal tensors in different proto fields,
    # and shares equal constants between nodes on some runs only)
    kept_as: dict[bytes, str] = {}
    renamed: dict[str, str] = {}
    canonical = []
    for item in graph.initializer:
        array = numpy_helper.to_array(item)
        tensor, value = numpy_helper.from_array(array, item.name), numpy_helper.from_array(array).SerializeToString()
        renamed[item.name] = kept_as.setdefault(value, item.name)
        if renamed[item.name] == item.name:
            canonical.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(canonical)
    for node in graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    keys = {t.name: "input " + t.name for t in graph.input}
    keys |= {name: hashlib.sha256(value).hexdigest() for value, name in kept_as.items()}
    node_keys, unique, first, same = [], [], {}, {}
    graph_outputs = {t.name for t in graph.output}
    for node in graph.node:  # stored in a topological order, so every input already has its key
        node.input[:] = [same.get(name, name) for name in node.input]
        attributes = [a.SerializeToString().hex() for a in sorted(node.attribute, key=lambda a: a.name)]
        key = digest(node.op_type, node.domain, *attributes, *(keys.get(i, "") for i in node.input))
        if key in first and not graph_outputs & set(node.output):
            # the same operation on the same inputs (tf2onnx repeats some on some runs only): computed once
            same |= dict(zip(node.output, first[key].output))
            continue
        first[key] = node
        unique.append(node)
        node_keys.append(key)
        keys |= {out: digest(key, str(j)) for j, out in enumerate(node.output)}
    del graph.node[:]
    graph.node.extend(unique)
    producer = {out: n for n, node in enumerate(graph.node) for out in node.output}
    needs = [{producer[i] for i in node.input if i in producer} for node in graph.node]
    users: dict[int, list[int]] = {}
    for n, inputs in enumerate(needs):
        for m in inputs:
            users.setdefault(m, []).append(n)
    waiting = [len(inputs) for inputs in needs]
    ready = [(node_keys[n], n) for n in range(len(graph.node)) if not waiting[n]]
    heapq.heapify(ready)
    order = []
    while ready:
        order.append(heapq.heappop(ready)[1])
        for n in users.get(order[-1], []):
            waiting[n] -= 1
            if not waiting[n]:
                heapq.heappush(ready, (node_keys[n], n))

    kept = {t.name for t in [*graph.input, *graph.output]}
    names = {}
    nodes = [graph.node[n] for n in order]
    for position, node in enumerate(nodes):
        node.name = f"{node.op_type}_{position}"
        for empty in ("domain", "doc_string"):  # an empty value set or left out: one way
            if not getattr(node, empty):
                node.ClearField(empty)
        for j, name in enumerate(node.input):
            if name and name not in kept:
                node.input[j] = names.setdefault(name, f"{node.name}_in{j}")
        for j, name in enumerate(node.output):
            if name not in kept:
                node.output[j] = names.setdefault(name, f"{node.name}_{j}")
    initializers = list(graph.initializer)
    for item in initializers:
        item.name = names.get(item.name, item.name)
    initializers.sort(key=lambda t: t.name)
    dimensions = {}
    for value in [*graph.input, *graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = dimensions.setdefault(dim.dim_param, f"dim{len(dimensions)}" if dimensions else "batch")
    for field, items in ((graph.node, nodes), (graph.initializer, initializers)):
        del field[:]
        field.extend(items)
    # Shape annotations (value_info) are recomputed, never renamed: after renaming by position an old
    # annotation can name another tensor (a [batch,1152,7,7] label on a [batch,96,56,56] tensor), which a
    # current onnxruntime's optimizer then trusts and computes wrongly.
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def quantize_onnx(fp32_path: Path, int8_path: Path, calibration: np.ndarray, dynamic: bool = False) -> None:
    """Static int8 quantization in QDQ format (weights in 7 bits, see below), calibrated on real training
    images (uint8); or, for recurrent networks (dynamic=True), int8 weights with activations quantized at run
    time."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if dynamic:
        quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.images = iter(calibration)

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {"image": image[None].astype(np.float32)}

    prepared = int8_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(prepared))
    try:
        # reduce_range: 7-bit weights. onnxruntime's x86 kernels without VNNI multiply 8-bit pairs with
        # VPMADDUBSW, which saturates at 16 bits for full-range weights: on such CPUs (AVX2 only) the fused
        # int8 convolutions of an 8-bit file compute wrongly (int8 ONNX and TFLite deciding differently).
        quantize_static(str(prepared), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                        reduce_range=True)
    finally:
        prepared.unlink(missing_ok=True)


def classifier_to_onnx(classifier, n_features: int, path: Path) -> None:
    """A fitted scikit-learn classifier -> ONNX with skl2onnx: float32 features (N x n_features) in,
    outputs `label` and `probabilities` (N x K; no zipmap), as the device's two-stage runner reads them."""
    import warnings

    from skl2onnx import to_onnx as sklearn_to_onnx
    example = np.zeros((1, n_features), np.float32)
    with warnings.catch_warnings():  # skl2onnx reads SVC attributes scikit-learn 1.9 marks as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        onnx_model = sklearn_to_onnx(classifier, example, options={"zipmap": False}, target_opset=17)
    path.write_bytes(onnx_model.SerializeToString())
