"""Read a pickled torch checkpoint without executing anything it contains.

Checkpoints of the reference implementation pickle its options namespace, its logger, data loaders and
datasets: `torch.load(weights_only=True)` refuses them and `weights_only=False` would run whatever the pickle
names. `load_restricted` reads the torch zip format itself with an unpickler that rebuilds only tensors,
plain containers, numbers, strings, `argparse.Namespace`, `torch.device` and dtypes; every other global
(a class of the reference, `DataLoader`, `os.system`, ...) becomes an inert `Placeholder` that records its
name and the arguments it was given, and never calls anything.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import codecs
import collections
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from utilities.errors import UserError

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
    "UntypedStorage": torch.uint8,
}


class Placeholder:
    """Stands in for an object of a global the restricted unpickler does not rebuild. Calling the
    placeholder class (pickle's REDUCE / NEWOBJ) only stores the arguments; state, items and appended values
    are stored too. Nothing is ever executed."""

    origin = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        instance = super().__new__(cls)
        instance.__dict__["args"] = args
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("appended", []).append(value)

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)

    def __repr__(self) -> str:
        return f"<placeholder for {self.origin}>"


@dataclass
class _StorageType:
    dtype: torch.dtype


@dataclass(frozen=True)
class _TensorType:
    """`torch.Tensor` / `torch.nn.Parameter` as named by `_rebuild_from_type_v2`; not callable."""

    name: str


_TENSOR_TYPES = (_TensorType("Tensor"), _TensorType("Parameter"))


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: Any, stride: Any, *rest: Any) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 without backward hooks: a view of the flat storage."""
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("a tensor refers to something that is not a storage")
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    """torch._utils._rebuild_parameter(_with_state): the data tensor, hooks and state dropped."""
    return data


def _rebuild_from_type(function: Any, new_type: Any, args: tuple, state: Any) -> Any:
    """torch._tensor._rebuild_from_type_v2 for plain tensors and parameters; other types stay inert."""
    if function in (_rebuild_tensor, _rebuild_parameter) and new_type in _TENSOR_TYPES:
        return function(*args)
    return Placeholder(function, new_type, args, state)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How protocol 2 writes bytes: `_codecs.encode(text, "latin1")`; no other codec is looked up."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"bytes in an unexpected encoding {encoding!r}")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _TENSOR_TYPES[0],
    ("torch.nn.parameter", "Parameter"): _TENSOR_TYPES[1],
    ("torch", "device"): torch.device,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): _latin1_bytes,
}


@dataclass
class RestrictedLoad:
    """What `load_restricted` read: the object, and the globals it replaced by placeholders."""

    obj: Any
    placeholders: list[str] = field(default_factory=list)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.storages: dict[str, torch.Tensor] = {}
        self.placeholder_types: dict[str, type[Placeholder]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 2 (torch.save's) writes Python 2 names such as __builtin__.set; map them as pickle does.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        origin = f"{module}.{name}"
        if origin not in self.placeholder_types:
            self.placeholder_types[origin] = type(name, (Placeholder,), {"origin": origin})
        return self.placeholder_types[origin]

    def persistent_load(self, saved_id: Any) -> torch.Tensor:
        if not (isinstance(saved_id, tuple) and len(saved_id) == 5 and saved_id[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {saved_id!r}")
        _, storage_type, key, _location, numel = saved_id
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError("a storage of an unknown type")
        if key not in self.storages:
            raw = bytearray(self.archive.read(f"{self.prefix}data/{key}"))
            dtype = storage_type.dtype
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() != numel and storage_type.dtype is not torch.uint8:
                raise pickle.UnpicklingError(f"storage {key} holds {flat.numel()} values, expected {numel}")
            self.storages[key] = flat
        return self.storages[key]


def load_restricted(path: str | Path) -> RestrictedLoad:
    """Unpickle a torch zip checkpoint (torch >= 1.6) onto the CPU, executing nothing it contains."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{path} is not a torch checkpoint in the zip format of torch >= 1.6 ({error})") from None
    with archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise UserError(f"{path} is a zip file but not a torch checkpoint (no single <name>/data.pkl)")
        prefix = pickles[0].removesuffix("data.pkl")
        if f"{prefix}byteorder" in archive.namelist() and archive.read(f"{prefix}byteorder") != b"little":
            raise UserError(f"{path} was written on a big-endian machine; re-save it on a little-endian one")
        with archive.open(pickles[0]) as handle:
            unpickler = _Unpickler(handle, archive, prefix)
            try:
                obj = unpickler.load()
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, RuntimeError) as error:
                raise UserError(f"{path}: the checkpoint cannot be read ({type(error).__name__}: {error})") from None
    return RestrictedLoad(obj, sorted(unpickler.placeholder_types))
