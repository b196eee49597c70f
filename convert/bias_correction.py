"""Empirical bias correction of a full-int8 TFLite file (Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction", ICCV 2019, section 4.2).

Rounding the weights to int8 shifts the average output of a layer, channel by channel, and the shift
adds up through the network. Here each convolution and dense layer, in graph order, is run on training
images in the int8 file and in its float32 twin; the difference of their channel means is added to the
layer's int32 bias before the next layer is measured, so each correction sees the ones before it. Only
bias values change: the file keeps its size, its operators and its quantization parameters.
"""
from __future__ import annotations

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
