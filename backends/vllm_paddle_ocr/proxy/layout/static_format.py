"""Paddle's static inference format, read without paddle: the program's parameters and ops, and their tensors.

A static model is a program (``inference.json``, PIR's JSON, or ``inference.pdmodel``, the older
``ProgramDesc`` protobuf) and ``inference.pdiparams``, every persistable tensor of the program one after
another in the order of their names. Each tensor there is: a uint32 version, a uint64 LoD level count
(each level a uint64 byte size and its data), a uint32 version, an int32 size and a ``TensorDesc``
protobuf (data type, dims), then the raw little-endian data.

Only what a weight conversion needs is read: the persistable tensors' names, shapes and types, and
for every op its type and the names it reads, in program order (ops in nested blocks where they sit).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Union

import numpy as np

from ...planning.layout_model import LayoutModelError

# paddle's VarType data types (framework.proto) and PIR's type names, as numpy dtypes.
PROTO_DTYPES: dict[int, str] = {
    0: "bool", 1: "int16", 2: "int32", 3: "int64", 4: "float16", 5: "float32", 6: "float64",
    20: "uint8", 21: "int8", 22: "bfloat16",
}  # fmt: skip
PIR_DTYPES: dict[str, str] = {
    "t_bool": "bool", "t_i16": "int16", "t_i32": "int32", "t_i64": "int64", "t_f16": "float16",
    "t_f32": "float32", "t_f64": "float64", "t_ui8": "uint8", "t_i8": "int8", "t_bf16": "bfloat16",
}  # fmt: skip
# ProgramDesc's VarType.Type values of the feed and fetch holders, which are persistable but hold no weights.
_FEED_FETCH_TYPES = {9, 10, 28}
# Upper bound on one tensor's descriptor; a larger one means the file is not a params file.
_MAX_DESC_BYTES = 1 << 16
# ProgramDesc names an op's inputs by slot, listed alphabetically; PIR lists them by position. These ranks
# put the slots in PIR's positional order (batch_norm: X, Mean, Variance, Scale, Bias; layer_norm: X,
# Scale, Bias; conv2d: Input, Filter; matmul: X, Y; embedding: Ids, W), so both read the same.
_SLOT_RANK: dict[str, int] = {
    "X": 0, "Input": 0, "Ids": 0, "Filter": 1, "Y": 1, "W": 1, "Mean": 1, "Variance": 2, "Scale": 3, "Bias": 4,
}


@dataclass(frozen=True)
class StaticParam:
    """A persistable tensor of the program."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class StaticOp:
    """One op: its type (``conv2d``, ``batch_norm_``, ``matmul`` ...) and the value names it reads, in slot order."""

    type: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class StaticProgram:
    """The persistable tensors of a static program and its ops in program order."""

    params: dict[str, StaticParam]
    ops: tuple[StaticOp, ...]


# ---------------------------------------------------------------- the program


def read_program(path: Union[str, Path]) -> StaticProgram:
    """The program in ``inference.json`` (PIR) or ``inference.pdmodel`` (ProgramDesc)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LayoutModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix == ".json":
            return _pir_program(json.loads(data))
        return _proto_program(data)
    except (ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
        raise LayoutModelError(
            f"{path} is not a paddle inference program this reader understands ({type(exc).__name__}: {exc}); "
            "re-download the layout model, or serve it with --layout-engine paddle"
        ) from exc


def _pir_program(document: Any) -> StaticProgram:
    if not isinstance(document, dict) or document.get("base_code", {}).get("magic") != "pir":
        raise ValueError("no PIR program (base_code.magic is not 'pir')")
    params: dict[str, StaticParam] = {}
    names: dict[int, str] = {}
    ops: list[StaticOp] = []

    def walk(regions: list[dict[str, Any]]) -> None:
        for region in regions:
            for block in region.get("blocks", []):
                for op in block.get("ops", []):
                    kind = op["#"]
                    if kind == "p":  # a parameter: [..., name] and one output value
                        name = op["A"][-1]
                        value = op["O"]
                        names[value["%"]] = name
                        dtype, dims = value["TT"]["D"][0]["#"], value["TT"]["D"][1]
                        params[name] = StaticParam(name, tuple(int(d) for d in dims), PIR_DTYPES[dtype.split(".", 1)[1]])
                        continue
                    inputs = tuple(names.get(item.get("%"), f"%{item.get('%')}") for item in op.get("I", []) if isinstance(item, dict))
                    ops.append(StaticOp(kind.split(".", 1)[-1], inputs))
                    # A combine op packs values into one; its output stands for all of them.
                    if kind.endswith(".combine"):
                        for out in _outputs(op):
                            names.setdefault(out, f"%{out}")
                    walk(op.get("regions", []))

    walk(document["program"]["regions"])
    return StaticProgram(params, tuple(ops))


def _outputs(op: dict[str, Any]) -> list[int]:
    out = op.get("O", [])
    items = out if isinstance(out, list) else [out]
    return [item["%"] for item in items if isinstance(item, dict) and "%" in item]


# A minimal protobuf wire-format reader: enough for ProgramDesc's nested messages, strings and varints.


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message: ints for varints, bytes for length-delimited."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
            if pos > len(data):
                raise ValueError("field runs past the end of the message")
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _dims(number_values: list[tuple[int, Any]]) -> list[int]:
    """A repeated int64 field, packed or not."""
    dims: list[int] = []
    for wire, value in number_values:
        if wire == 0:
            dims.append(_signed(value))
        else:
            pos = 0
            while pos < len(value):
                item, pos = _varint(value, pos)
                dims.append(_signed(item))
    return dims


def tensor_desc(data: bytes) -> tuple[str, tuple[int, ...]]:
    """A TensorDesc: (numpy dtype name, dims)."""
    dtype = None
    dims: list[tuple[int, Any]] = []
    for number, wire, value in _fields(data):
        if number == 1:
            dtype = value
        elif number == 2:
            dims.append((wire, value))
    if dtype not in PROTO_DTYPES:
        raise ValueError(f"unsupported tensor data type {dtype}")
    return PROTO_DTYPES[dtype], tuple(_dims(dims))


def _proto_program(data: bytes) -> StaticProgram:
    blocks = [value for number, _, value in _fields(data) if number == 1]
    if not blocks:
        raise ValueError("no blocks in the ProgramDesc")
    params: dict[str, StaticParam] = {}
    ops: list[StaticOp] = []
    for block in blocks:
        for number, _, value in _fields(block):
            if number == 3:
                param = _proto_var(value)
                if param is not None:
                    params[param.name] = param
            elif number == 4:
                ops.append(_proto_op(value))
    return StaticProgram(params, tuple(ops))


def _proto_var(data: bytes) -> StaticParam | None:
    name, var_type, persistable = "", b"", False
    for number, _, value in _fields(data):
        if number == 1:
            name = value.decode("utf-8")
        elif number == 2:
            var_type = value
        elif number == 3:
            persistable = bool(value)
    if not persistable:
        return None
    kind, desc = None, None
    for number, _, value in _fields(var_type):
        if number == 1:
            kind = value
        elif number == 3:  # DenseTensorDesc { TensorDesc tensor = 1; ... }
            desc = next((inner for n, _, inner in _fields(value) if n == 1), None)
    if kind in _FEED_FETCH_TYPES or desc is None:
        return None
    dtype, dims = tensor_desc(desc)
    return StaticParam(name, dims, dtype)


def _proto_op(data: bytes) -> StaticOp:
    kind, slots = "", []
    for number, _, value in _fields(data):
        if number == 3:
            kind = value.decode("utf-8")
        elif number == 1:  # Var { string parameter = 1; repeated string arguments = 2; }
            parts = list(_fields(value))
            slot = next((inner.decode("utf-8") for n, _, inner in parts if n == 1), "")
            slots.append((slot, [inner.decode("utf-8") for n, _, inner in parts if n == 2]))
    slots.sort(key=lambda item: _SLOT_RANK.get(item[0], len(_SLOT_RANK)))
    return StaticOp(kind, tuple(name for _, names in slots for name in names))


# ---------------------------------------------------------------- the tensors


def read_params(path: Union[str, Path], program: StaticProgram) -> dict[str, np.ndarray]:
    """Every persistable tensor of the program from ``inference.pdiparams`` (stored in name order)."""
    path = Path(path)
    names = sorted(program.params)
    tensors: dict[str, np.ndarray] = {}
    try:
        with path.open("rb") as fh:
            for name in names:
                tensors[name] = _read_tensor(fh, program.params[name], path)
            if fh.read(1):
                raise LayoutModelError(
                    f"{path} holds more tensors than its program's {len(names)} parameters; the program and "
                    "the params file do not belong together: re-download the layout model"
                )
    except OSError as exc:
        raise LayoutModelError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return tensors


def _exact(fh: BinaryIO, size: int, path: Path, name: str) -> bytes:
    data = fh.read(size)
    if len(data) != size:
        raise LayoutModelError(f"{path} ends inside tensor {name}: the file is truncated; re-download the layout model")
    return data


def _read_tensor(fh: BinaryIO, param: StaticParam, path: Path) -> np.ndarray:
    (_version,) = struct.unpack("<I", _exact(fh, 4, path, param.name))
    (lod_levels,) = struct.unpack("<Q", _exact(fh, 8, path, param.name))
    for _ in range(lod_levels):
        (size,) = struct.unpack("<Q", _exact(fh, 8, path, param.name))
        _exact(fh, size, path, param.name)
    _exact(fh, 4, path, param.name)
    (desc_size,) = struct.unpack("<i", _exact(fh, 4, path, param.name))
    if not 0 < desc_size <= _MAX_DESC_BYTES:
        raise LayoutModelError(f"{path}: tensor {param.name} has a {desc_size}-byte descriptor; not a paddle params file")
    try:
        dtype, dims = tensor_desc(_exact(fh, desc_size, path, param.name))
    except (ValueError, IndexError) as exc:
        raise LayoutModelError(f"{path}: tensor {param.name} has an unreadable descriptor ({exc})") from exc
    if tuple(dims) != param.shape or dtype != param.dtype:
        raise LayoutModelError(
            f"{path}: tensor {param.name} is {dtype}{list(dims)} but the program declares "
            f"{param.dtype}{list(param.shape)}; the program and the params file do not belong together"
        )
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    raw_dtype = np.dtype("<u2") if dtype == "bfloat16" else np.dtype(dtype).newbyteorder("<")
    data = _exact(fh, count * raw_dtype.itemsize, path, param.name)
    array = np.frombuffer(data, dtype=raw_dtype).reshape(dims)
    if dtype == "bfloat16":  # numpy has no bfloat16: widen to float32 (the high half of its bits)
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array
