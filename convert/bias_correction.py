"""Empirical bias correction of full-int8 TFLite and static int8 (QDQ) ONNX files (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", ICCV 2019, section 4.2).

Rounding the weights to int8 shifts the average output of a layer, channel by channel, and the shift
adds up through the network. Here each convolution and dense layer, in graph order, is run on training
images in the int8 file and in its float32 twin; the difference of their channel means is added to the
layer's int32 bias before the next layer is measured, so each correction sees the ones before it. Only
bias values change: the file keeps its operators and its quantization parameters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from leukoscreen.edge.runtimes import tflite_input

CORRECTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _interpreter(model: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    # built-in kernels: XNNPACK would keep the intermediate tensors to itself
    interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


def _channel_means(model: bytes, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Mean of each named tensor over the images and every position, per channel (last axis), in real
    units (int8 tensors dequantized)."""
    interpreter = _interpreter(model)
    tensors = {t["name"]: t for t in interpreter.get_tensor_details()}
    source = interpreter.get_input_details()[0]
    sums = {name: 0.0 for name in names}
    for image in images:
        interpreter.set_tensor(source["index"], tflite_input(image[None], source))
        interpreter.invoke()
        for name in names:
            tensor = tensors[name]
            values = interpreter.get_tensor(tensor["index"]).astype(np.float64)
            if tensor["dtype"] != np.float32:
                scale, zero_point = tensor["quantization"]
                values = (values - zero_point) * scale
            sums[name] = sums[name] + values.reshape(-1, values.shape[-1]).mean(axis=0)
    return {name: total / len(images) for name, total in sums.items()}


def _own_buffers(model: bytearray) -> dict[int, np.ndarray]:
    """A writable view of the stored values of each tensor of the main graph whose buffer no other tensor
    reads, by tensor index. Small buffers sit inside the flatbuffer; ai-edge-quantizer writes them after
    it, at an offset."""
    from ai_edge_litert import schema_py_generated as schema
    flat = schema.Model.GetRootAs(model, 0)
    graphs = [flat.Subgraphs(g) for g in range(flat.SubgraphsLength())]
    readers = np.bincount([graph.Tensors(i).Buffer() for graph in graphs for i in range(graph.TensorsLength())],
                          minlength=flat.BuffersLength())
    views = {}
    for index in range(graphs[0].TensorsLength()):
        number = graphs[0].Tensors(index).Buffer()
        buffer = flat.Buffers(number)
        if readers[number] != 1 or buffer is None:
            continue
        if buffer.Offset() > 1:
            views[index] = np.frombuffer(model, np.uint8, buffer.Size(), buffer.Offset())
        elif buffer.DataLength():
            views[index] = buffer.DataAsNumpy()
    return views


def _correctable_layers(model: bytes, own_buffers) -> list[tuple[str, int, np.ndarray]]:
    """(output tensor name, bias tensor index, bias scales) of each int8 convolution or dense layer, in
    graph order, whose int32 bias has a buffer of its own (an unrolled recurrent layer shares one bias
    between time steps; a converter may store equal biases once)."""
    interpreter = _interpreter(model)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    layers = []
    for op in interpreter._get_ops_details():
        if op["op_name"] not in CORRECTED_OPS or len(op["inputs"]) < 3 or op["inputs"][2] < 0:
            continue
        bias, output = tensors[op["inputs"][2]], tensors[op["outputs"][0]]
        if bias["dtype"] == np.int32 and output["dtype"] == np.int8 and bias["index"] in own_buffers:
            scales = np.asarray(bias["quantization_parameters"]["scales"], np.float64)
            layers.append((output["name"], bias["index"], scales))
    return layers


def correct_biases(int8_model: bytes, float_model: bytes, images: np.ndarray,
                   progress: Callable[[str], None] = print) -> tuple[bytes, int]:
    """The int8 file with corrected biases, and how many layers were corrected. `float_model` is the
    float32 TFLite file of the same network (tensor names are matched); `images` are uint8 training
    images (a few dozen suffice: the means are over every position too)."""
    model = bytearray(int8_model)
    biases = _own_buffers(model)
    float_names = {t["name"] for t in _interpreter(float_model).get_tensor_details()}
    layers = [layer for layer in _correctable_layers(int8_model, biases) if layer[0] in float_names]
    if not layers:
        return int8_model, 0
    target = _channel_means(float_model, images, [name for name, *_ in layers])
    for done, (name, bias, scales) in enumerate(layers, 1):
        current = _channel_means(bytes(model), images, [name])[name]
        values = biases[bias].view(np.int32).astype(np.int64) + np.rint((target[name] - current) / scales)
        biases[bias][:] = np.clip(values, -2**31, 2**31 - 1).astype(np.int32).view(np.uint8)
        if done % 10 == 0 or done == len(layers):
            progress(f"      bias correction: {done}/{len(layers)} layers")
    return bytes(model), len(layers)


def _onnx_channel_means(model, images: np.ndarray, names: list[str], threads: int = 2) -> dict[str, np.ndarray]:
    """Per-channel means of the named tensors of an ONNX model (NCHW inside, as tf2onnx writes it)."""
    import onnx
    import onnxruntime
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                              for name in names if name not in outputs)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    source = session.get_inputs()[0].name
    sums, counts = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
    for start in range(0, len(images), 16):
        for name, values in zip(names, session.run(names, {source: images[start:start + 16].astype(np.float32)})):
            values = np.moveaxis(values, 1, -1) if values.ndim == 4 else values
            values = values.reshape(-1, values.shape[-1]).astype(np.float64)
            sums[name] = sums[name] + values.sum(axis=0)
            counts[name] += len(values)
    return {name: sums[name] / counts[name] for name in names}


def correct_onnx_biases(int8_path: Path, float_path: Path, images: np.ndarray,
                        progress: Callable[[str], None] = print) -> int:
    """Bias correction of a static int8 QDQ ONNX file (onnxruntime's `quantize_static`), in place; returns
    how many layers were corrected. Each convolution or Gemm whose bias is an int32 initializer behind a
    DequantizeLinear is measured where the int8 graph hands its output on: after its QuantizeLinear and
    DequantizeLinear pair, which also does the clipping of a ReLU6 that the quantizer folded away."""
    import onnx
    from onnx import numpy_helper
    model, reference = onnx.load(str(int8_path)), onnx.load(str(float_path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    float_names = {name for node in reference.graph.node for name in node.output}
    layers = []  # (float tensor, int8 tensor, bias initializer, bias scale initializer)
    for node in graph.node:
        bias = producer.get(node.input[2]) if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 else None
        if (bias is None or bias.op_type != "DequantizeLinear" or bias.input[0] not in initializers
                or initializers[bias.input[0]].data_type != onnx.TensorProto.INT32 or node.output[0] not in float_names):
            continue
        measured = node.output[0]
        after = consumers.get(measured, [])
        if len(after) == 1 and after[0].op_type == "QuantizeLinear":
            dequantized = [n for n in consumers.get(after[0].output[0], []) if n.op_type == "DequantizeLinear"]
            measured = dequantized[0].output[0] if dequantized else measured
        layers.append((node.output[0], measured, initializers[bias.input[0]], initializers[bias.input[1]]))
    if not layers:
        return 0
    target = _onnx_channel_means(reference, images, [name for name, *_ in layers])
    for done, (name, measured, bias, scale) in enumerate(layers, 1):
        current = _onnx_channel_means(model, images, [measured])[measured]
        values = numpy_helper.to_array(bias).astype(np.int64)
        values = values + np.rint((target[name] - current) / numpy_helper.to_array(scale).astype(np.float64))
        bias.CopyFrom(numpy_helper.from_array(np.clip(values, -2**31, 2**31 - 1).astype(np.int32), bias.name))
        if done % 10 == 0 or done == len(layers):
            progress(f"      bias correction: {done}/{len(layers)} layers")
    onnx.save(model, str(int8_path))
    return len(layers)


def limit_onnx_biases(int8_path: Path) -> int:
    """Keep every int32 bias of a static int8 (QDQ) ONNX file far enough from the int32 limits that a fused
    integer convolution (onnxruntime's QLinearConv) cannot overflow its int32 accumulator: |bias| <= 2^31 - 1
    - K * 128 * 127 for K weights per output channel. Channels whose weights are all nearly zero get a tiny
    weight scale, so their bias in those units sits at the int32 limit; without this a current onnxruntime
    computes such a layer wrongly (first seen as int8 ONNX and TFLite files deciding differently). Changes
    the affected biases by a few parts in 10^5 of their value; returns how many channels it changed."""
    import onnx
    from onnx import numpy_helper
    model = onnx.load(str(int8_path))
    initializers = {i.name: i for i in model.graph.initializer}
    producer = {name: node for node in model.graph.node for name in node.output}
    changed = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
            continue
        weight, bias = producer.get(node.input[1]), producer.get(node.input[2])
        if not (weight and bias and weight.op_type == bias.op_type == "DequantizeLinear"
                and weight.input[0] in initializers and bias.input[0] in initializers):
            continue
        shape = initializers[weight.input[0]].dims
        per_channel = int(np.prod(shape[1:])) if node.op_type == "Conv" else int(max(shape))
        bound = 2**31 - 1 - per_channel * 128 * 127
        values = numpy_helper.to_array(initializers[bias.input[0]])
        limited = np.clip(values, -bound, bound).astype(np.int32)
        changed += int((limited != values).sum())
        initializers[bias.input[0]].CopyFrom(numpy_helper.from_array(limited, bias.input[0]))
    onnx.save(model, str(int8_path))
    return changed
