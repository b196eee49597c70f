"""Reading PyTorch `.pth` state dicts into numpy arrays, without torch.

A `.pth` file is a pickle of an (ordered) dict of tensors whose storages lie beside it: in a zip archive
(`*/data.pkl` + `*/data/<key>`, torch >= 1.6) or, in the older format, as raw blocks after the pickle.
The unpickler here is restricted: it builds only dicts and tensors, and refuses anything else a pickle
could ask for, so a file cannot run code.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                  "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names the file and the first problem."""


class _Storage:
    def __init__(self, dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.array: np.ndarray | None = None


def _rebuild_tensor(storage: _Storage, offset: int, size, stride, *_):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, *_):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, handle, storages: dict):
        super().__init__(handle)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        raise WeightsError(f"the file asks for {module}.{name}: not a plain state dict of tensors")

    def persistent_load(self, saved_id):
        kind = saved_id[0]
        if kind != "storage":
            raise WeightsError(f"unexpected persistent object {kind!r}: not a plain state dict of tensors")
        dtype, key, numel = saved_id[1], str(saved_id[2]), saved_id[4]
        if key not in self.storages:
            self.storages[key] = _Storage(dtype, key, numel)
        return self.storages[key]


def _tensor(value) -> np.ndarray:
    _, storage, offset, size, stride = value
    if storage.array is None:
        raise WeightsError(f"storage {storage.key} has no data in the file")
    itemsize = storage.array.itemsize
    view = np.lib.stride_tricks.as_strided(storage.array[offset:], size, tuple(s * itemsize for s in stride))
    return np.array(view)


def _read_zip(path: Path) -> tuple[object, dict]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise WeightsError(f"{path}: a zip without data.pkl is not a PyTorch file")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict = {}
        obj = _Unpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        for key, storage in storages.items():
            raw = archive.read(f"{prefix}data/{key}")
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=storage.numel)
    return obj, storages


def _read_legacy(path: Path) -> tuple[object, dict]:
    with open(path, "rb") as handle:
        storages: dict = {}
        try:
            magic = _Unpickler(handle, storages).load()
        except (pickle.UnpicklingError, EOFError, ValueError, IndexError) as error:
            raise WeightsError(f"{path}: not a PyTorch .pth file ({error})") from error
        if magic != LEGACY_MAGIC:
            raise WeightsError(f"{path}: not a PyTorch .pth file (unknown header)")
        _Unpickler(handle, storages).load()  # protocol version
        _Unpickler(handle, storages).load()  # system info (byte order, sizes)
        obj = _Unpickler(handle, storages).load()
        for key in _Unpickler(handle, storages).load():
            storage = storages[str(key)]
            count = int(np.frombuffer(handle.read(8), "<i8")[0])
            raw = handle.read(count * np.dtype(storage.dtype).itemsize)
            storage.array = np.frombuffer(raw, dtype=storage.dtype, count=count)
    return obj, storages


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Name -> array for every tensor of a PyTorch state dict file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        obj, _ = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except WeightsError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, IndexError, TypeError) as error:
        raise WeightsError(f"{path}: damaged or not a PyTorch state dict ({error})") from error
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # a training checkpoint
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    state = {}
    for name, value in obj.items():
        if not (isinstance(value, tuple) and value and value[0] == "tensor"):
            raise WeightsError(f"{path}: entry {name!r} is not a tensor")
        state[name] = _tensor(value)
    return state
