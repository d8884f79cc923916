"""Reading and writing safetensors files tensor by tensor.

The `safetensors` package's numpy backend cannot read bfloat16 (the dtype of every published
Qwen2.5-VL checkpoint) and its writers want all tensors of a file in memory at once. The format is
small (an 8-byte little-endian header length, a JSON header of name -> dtype/shape/byte range, then the
raw bytes), so we read it through a read-only memory map, which hands out one tensor at a time without
loading the file, and write it by streaming one tensor at a time.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def dtype_name(dtype) -> str:
    """The safetensors dtype string ("F32", "BF16", ...) of a numpy / JAX dtype."""
    dtype = np.dtype(dtype)
    if dtype not in _NAMES:
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors")
    return _NAMES[dtype]


class SafetensorsFile:
    """A read-only view of one .safetensors file; `get(name)` returns a memory-mapped array."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) != 8:
                raise ValueError(f"{self.path}: too short to be a safetensors file")
            (header_len,) = struct.unpack("<Q", prefix)
            size = os.path.getsize(self.path)
            if header_len > size - 8:
                raise ValueError(f"{self.path}: header length {header_len} exceeds the file size {size}")
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{self.path}: unreadable safetensors header ({error})") from error
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._entries: dict[str, dict] = header
        self._data_start = 8 + header_len
        self._data_size = size - self._data_start
        for name, entry in self._entries.items():
            if entry.get("dtype") not in _DTYPES:
                raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {entry.get('dtype')!r}")
            begin, end = entry["data_offsets"]
            expected = int(np.prod(entry["shape"], dtype=np.int64)) * _DTYPES[entry["dtype"]].itemsize
            if end - begin != expected or end > self._data_size:
                raise ValueError(f"{self.path}: tensor {name!r} byte range {entry['data_offsets']} does not fit its "
                                 f"shape {entry['shape']} / dtype {entry['dtype']} or the file")
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if self._data_size else None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        return _DTYPES[self._entries[name]["dtype"]]

    def get(self, name: str) -> np.ndarray:
        if name not in self._entries:
            raise KeyError(f"tensor {name!r} is not in {self.path}")
        entry = self._entries[name]
        begin, end = entry["data_offsets"]
        raw = self._map[self._data_start + begin:self._data_start + end]
        return raw.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def write_safetensors(path: str | os.PathLike, tensors: Iterable[tuple[str, tuple[int, ...], np.dtype]],
                      fetch: Callable[[str], np.ndarray], metadata: Mapping[str, str] | None = None) -> int:
    """Writes the tensors listed as (name, shape, dtype), calling `fetch(name)` for each one in turn.

    Returns the number of tensor bytes written. `fetch` must return an array of exactly the listed
    shape and dtype (checked), so the header written up front stays true.
    """
    tensors = list(tensors)
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": dtype_name(dtype), "shape": [int(s) for s in shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    tmp_path = os.fspath(path) + ".partial"
    with open(tmp_path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, shape, dtype in tensors:
            array = np.ascontiguousarray(fetch(name))
            if array.shape != tuple(shape) or array.dtype != np.dtype(dtype):
                raise ValueError(f"tensor {name!r}: fetched {array.shape} {array.dtype}, "
                                 f"declared {tuple(shape)} {np.dtype(dtype)}")
            array.tofile(f)
    os.replace(tmp_path, path)
    return offset
