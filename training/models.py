"""Model builders by name. Every model takes float32 pixel values 0-255 (HxWx3) and rescales inside,
so the device feeds it the uint8 output of `edge.preprocessing.preprocess` as it is."""
from __future__ import annotations

import keras
from keras import layers


def _output(x, num_classes: int):
    # float32 output keeps probabilities exact when the rest trains in mixed precision
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", dtype="float32", name="probability")(x)
    return layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)


def basic_cnn(num_classes: int, input_size: int = 128) -> keras.Model:
    """The thesis' Basic CNN (section 3.5): three 3x3 convolutions of 128 filters, stride 1, each with
    ReLU and 2x2 max pooling, then a dense head; sigmoid for two classes, softmax for more."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    for block in range(1, 4):
        x = layers.Conv2D(128, 3, strides=1, name=f"conv{block}")(x)
        x = layers.ReLU(name=f"relu{block}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dropout(0.5, name="dropout1")(x)
    x = layers.Dense(64, activation="relu", name="dense")(x)
    x = layers.Dropout(0.3, name="dropout2")(x)
    return keras.Model(inputs, _output(x, num_classes), name="basic_cnn")


def transfer_model(backbone: str, num_classes: int, input_size: int, weights: str = "imagenet") -> keras.Model:
    """Thesis Model 2: a backbone (ImageNet weights, a .pth file, or "none": from scratch) with its
    classifier replaced by a new head. The head's layers are named head_* / probabilities."""
    from leukoscreen.training.backbones import build_backbone
    ported = build_backbone(backbone, weights, input_size, include_top=False)
    x = layers.Dropout(0.5 if backbone == "alexnet" else 0.2, name="head_dropout")(ported.model.output)
    return keras.Model(ported.model.input, _output(x, num_classes), name=f"{ported.model.name}_transfer")


ODRNN_DEFAULTS = {"sequence": "rows", "cell": "lstm", "layers": 2, "units": 64, "bidirectional": False,
                  "dropout": 0.2}


def odrnn(num_classes: int, input_size: int = 64, sequence: str = "rows", cell: str = "lstm", layers_: int = 2,
          units: int = 64, bidirectional: bool = False, dropout: float = 0.2) -> keras.Model:
    """The thesis' deep recurrent network (3.17): the (HSV-masked) image read as a sequence, one step per
    row of the image ("rows") or of a small CNN's feature map ("cnn"), by stacked LSTM or GRU layers
    (optionally bidirectional), then a softmax. Recurrent layers are unrolled so the model converts to
    TFLite without tensor-list (Flex) ops."""
    if sequence not in ("rows", "cnn") or cell not in ("lstm", "gru") or layers_ < 1 or units < 1:
        raise ValueError(f"odrnn: sequence {sequence!r} (rows|cnn), cell {cell!r} (lstm|gru), layers {layers_} "
                         f"and units {units} (>= 1)")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    if sequence == "cnn":
        for block, filters in enumerate((32, 64), start=1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"stem_conv{block}")(x)
            x = layers.MaxPooling2D(2, name=f"stem_pool{block}")(x)
    rows, columns, channels = x.shape[1:]
    x = layers.Reshape((rows, columns * channels), name="rows_as_steps")(x)
    recurrent = {"lstm": layers.LSTM, "gru": layers.GRU}[cell]
    for index in range(1, layers_ + 1):
        layer = recurrent(units, return_sequences=index < layers_, unroll=True, name=f"{cell}{index}")
        x = (layers.Bidirectional(layer, name=f"bidirectional_{cell}{index}") if bidirectional else layer)(x)
        x = layers.Dropout(dropout, name=f"dropout{index}")(x)
    return keras.Model(inputs, _output(x, num_classes), name="odrnn")


MODELS = {"basic-cnn": (basic_cnn, 128), "mobilenet-v2": (None, 224), "efficientnet-lite0": (None, 224),
          "alexnet": (None, 227), "odrnn": (odrnn, 64)}
HEAD_LAYERS = ("head_dropout", "probabilities", "probability")


def build_model(name: str, num_classes: int, input_size: int | None = None, weights: str = "none",
                options: dict | None = None) -> keras.Model:
    """A model by name; options: the ODRNN's hyperparameters (see ODRNN_DEFAULTS)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    builder, default_size = MODELS[name]
    if builder is None:
        return transfer_model(name, num_classes, input_size or default_size, weights)
    if name == "odrnn":
        values = ODRNN_DEFAULTS | (options or {})
        unknown = set(values) - set(ODRNN_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown ODRNN options {sorted(unknown)}; known: {', '.join(ODRNN_DEFAULTS)}")
        values["layers_"] = values.pop("layers")
        return odrnn(num_classes, input_size or default_size, **values)
    return builder(num_classes, input_size or default_size)


def set_trainable_top(model: keras.Model, fraction: float) -> int:
    """Freeze the backbone except its top `fraction` of weighted layers (batch normalisation stays frozen,
    in inference mode, as usual when fine-tuning on small batches); the head always trains. Returns the
    number of trainable layers."""
    weighted = [layer for layer in model.layers if layer.weights and layer.name not in HEAD_LAYERS]
    first_open = len(weighted) - int(round(fraction * len(weighted)))
    open_layers = {layer.name for layer in weighted[first_open:]}
    for layer in model.layers:
        frozen_bn = isinstance(layer, layers.BatchNormalization)
        layer.trainable = layer.name in HEAD_LAYERS or (layer.name in open_layers and not frozen_bn)
    return sum(layer.trainable and bool(layer.weights) for layer in model.layers)


def float32_copy(model: keras.Model, name: str, num_classes: int, input_size: int,
                 options: dict | None = None) -> keras.Model:
    """The same network with float32 layers and the trained weights (for saving and conversion)."""
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_model(name, num_classes, input_size, options=options)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def cpu_has_bfloat16() -> bool:
    """True where the CPU computes bfloat16 natively (AMX or AVX-512 BF16), making mixed precision fast."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_input_size(name: str) -> int:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name][1]
