"""Read a legacy (pre-1.6, non-zip) PyTorch ``.pth`` state dict without torch.

The legacy format is a sequence of pickles: a magic number, the protocol version,
system info, the object itself (tensors refer to storages by persistent id), the
list of storage keys, and then each storage's raw bytes after an 8-byte element
count. The unpickler resolves only the handful of globals a state dict uses, so a
hostile file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

_STORAGE_DTYPES: dict[str, npt.DTypeLike] = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class PthFormatError(ValueError):
    """The file is not a legacy PyTorch state dict this reader understands."""


@dataclass(slots=True)
class _Storage:
    dtype: np.dtype[Any]
    data: npt.NDArray[Any] | None = None


@dataclass(slots=True)
class _LazyTensor:
    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def materialize(self) -> npt.NDArray[Any]:
        assert self.storage.data is not None
        if not self.size:
            return self.storage.data[self.offset : self.offset + 1].reshape(()).copy()
        item = self.storage.data.itemsize
        view = np.lib.stride_tricks.as_strided(
            self.storage.data[self.offset :],
            shape=self.size,
            strides=tuple(s * item for s in self.stride),
            writeable=False,
        )
        return np.array(view)


def _rebuild_tensor(
    storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...], *_: Any
) -> _LazyTensor:
    return _LazyTensor(storage, offset, tuple(size), tuple(stride))


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise PthFormatError(f"unexpected global {module}.{name} in a state dict")

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or len(pid) < 3 or pid[0] != "storage":
            raise PthFormatError("unexpected persistent id")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise PthFormatError("unexpected storage type")
        return self._storages.setdefault(key, _Storage(storage_type.dtype))


def load_state_dict(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of the state dict at ``path``, as numpy arrays."""
    storages: dict[str, _Storage] = {}
    with path.open("rb") as file:
        if pickle.load(file) != MAGIC_NUMBER:
            raise PthFormatError("not a legacy PyTorch file (bad magic number)")
        if pickle.load(file) != PROTOCOL_VERSION:
            raise PthFormatError("unsupported legacy PyTorch protocol version")
        info = _Unpickler(file, storages).load()
        if not isinstance(info, dict) or not info.get("little_endian", False):
            raise PthFormatError("only little-endian files are supported")
        obj = _Unpickler(file, storages).load()
        keys = _Unpickler(file, storages).load()
        if not isinstance(obj, dict) or not isinstance(keys, list):
            raise PthFormatError("the file does not hold a state dict")
        for key in keys:
            storage = storages[str(key)]
            count = int.from_bytes(file.read(8), "little")
            raw = file.read(count * storage.dtype.itemsize)
            if len(raw) != count * storage.dtype.itemsize:
                raise PthFormatError("the file is truncated")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    out: dict[str, npt.NDArray[Any]] = {}
    for name, value in obj.items():
        if isinstance(value, _LazyTensor):
            out[str(name)] = value.materialize()
    return out
