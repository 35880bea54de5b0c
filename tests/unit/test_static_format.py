"""Paddle's static format read without paddle: hand-encoded programs and params files, and broken ones.

The files paddle itself writes are read in tests/integration/test_layout_parity.py, against paddle's loader.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from vllm_paddle_ocr.backends.vllm_paddle_ocr.planning.layout_model import LayoutModelError
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.conversion import TorchUse, pair_tensors
from vllm_paddle_ocr.backends.vllm_paddle_ocr.proxy.layout.static_format import read_params, read_program

FP32, INT64 = 5, 3


def varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value: bytes | int | str) -> bytes:
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def tensor_desc(dtype: int, dims: list[int]) -> bytes:
    return field(1, dtype) + b"".join(field(2, d) for d in dims)


def var(name: str, dims: list[int], *, persistable: bool = True, dtype: int = FP32, kind: int = 7) -> bytes:
    dense = field(1, tensor_desc(dtype, dims))
    return field(1, name) + field(2, field(1, kind) + field(3, dense)) + field(3, int(persistable))


def op(kind: str, **slots: list[str]) -> bytes:
    inputs = b"".join(field(1, field(1, slot) + b"".join(field(2, n) for n in names)) for slot, names in slots.items())
    return inputs + field(3, kind)


def program_desc(vars_: list[bytes], ops: list[bytes]) -> bytes:
    block = field(1, 0) + field(2, -1) + b"".join(field(3, v) for v in vars_) + b"".join(field(4, o) for o in ops)
    return field(1, block)


def params_file(tensors: dict[str, np.ndarray]) -> bytes:
    """Tensors in name order, each with paddle's headers (version, LoD, version, descriptor)."""
    out = b""
    for name in sorted(tensors):
        array = tensors[name]
        code = {np.dtype("float32"): FP32, np.dtype("int64"): INT64}[array.dtype]
        desc = tensor_desc(code, list(array.shape))
        out += struct.pack("<IQIi", 0, 0, 0, len(desc)) + desc + array.astype(array.dtype.newbyteorder("<")).tobytes()
    return out


@pytest.fixture
def legacy(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A conv + batch norm program in ProgramDesc form (slots listed alphabetically, as paddle writes them)."""
    rng = np.random.default_rng(0)
    tensors = {
        "conv2d_0.w_0": rng.random((2, 3, 3, 3), dtype=np.float32),
        "batch_norm2d_0.w_0": rng.random(2, dtype=np.float32),  # scale
        "batch_norm2d_0.b_0": rng.random(2, dtype=np.float32),
        "batch_norm2d_0.w_1": rng.random(2, dtype=np.float32),  # mean
        "batch_norm2d_0.w_2": rng.random(2, dtype=np.float32),  # variance
        "steps": np.arange(3, dtype=np.int64),
    }
    vars_ = [var(name, list(value.shape), dtype=INT64 if value.dtype == np.int64 else FP32) for name, value in tensors.items()]
    vars_ += [var("x", [-1, 3, 8, 8], persistable=False), var("feed", [], kind=9), var("conv_out", [-1, 2, 6, 6], persistable=False)]
    ops = [
        op("conv2d", Filter=["conv2d_0.w_0"], Input=["x"]),
        op("batch_norm", Bias=["batch_norm2d_0.b_0"], Mean=["batch_norm2d_0.w_1"], Scale=["batch_norm2d_0.w_0"],
           Variance=["batch_norm2d_0.w_2"], X=["conv_out"]),
        op("shape", Input=["steps"]),  # reads its shape only
    ]
    program = tmp_path / "inference.pdmodel"
    program.write_bytes(program_desc(vars_, ops))
    params = tmp_path / "inference.pdiparams"
    params.write_bytes(params_file(tensors))
    return program, params, tensors


def test_a_program_desc_gives_its_persistable_tensors_and_ops(legacy):
    program_path, params_path, tensors = legacy
    program = read_program(program_path)
    assert set(program.params) == set(tensors)  # not the activations, not the feed holder
    assert program.params["conv2d_0.w_0"].shape == (2, 3, 3, 3) and program.params["steps"].dtype == "int64"
    # Slots in positional order: batch_norm reads x, mean, variance, scale, bias.
    assert program.ops[1].inputs == ("conv_out", "batch_norm2d_0.w_1", "batch_norm2d_0.w_2", "batch_norm2d_0.w_0", "batch_norm2d_0.b_0")
    read = read_params(params_path, program)
    assert set(read) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(read[name], value)


def test_a_pir_program_gives_its_parameters_in_use_order(tmp_path):
    def param(value_id: int, name: str, dims: list[int]) -> dict:
        return {"#": "p", "A": [0, 1, 1, name], "O": {"%": value_id, "TT": {"#": "0.t_dtensor", "D": [{"#": "0.t_f32"}, dims, "NCHW", [], 0]}}}

    document = {
        "base_code": {"magic": "pir", "version": 4},
        "program": {"regions": [{"blocks": [{"ops": [
            param(1, "linear_0.b_0", [4]),
            param(2, "linear_0.w_0", [3, 4]),
            {"#": "1.data", "I": [], "O": [{"%": 3}]},
            {"#": "1.matmul", "I": [{"%": 3}, {"%": 2}], "O": [{"%": 4}]},
            {"#": "1.add", "I": [{"%": 4}, {"%": 1}], "O": [{"%": 5}]},
        ]}]}]},
    }
    path = tmp_path / "inference.json"
    path.write_text(json.dumps(document))
    program = read_program(path)
    assert program.params["linear_0.w_0"].shape == (3, 4)
    assert [o.type for o in program.ops] == ["data", "matmul", "add"]
    assert program.ops[1].inputs == ("%3", "linear_0.w_0")


def test_a_truncated_params_file_is_refused(legacy):
    program_path, params_path, _ = legacy
    params_path.write_bytes(params_path.read_bytes()[:-5])
    with pytest.raises(LayoutModelError, match="truncated; re-download"):
        read_params(params_path, read_program(program_path))


def test_params_that_do_not_match_the_program_are_refused(legacy, tmp_path):
    program_path, params_path, tensors = legacy
    params_path.write_bytes(params_file({**tensors, "conv2d_0.w_0": np.zeros((2, 3, 5, 5), np.float32)}))
    with pytest.raises(LayoutModelError, match=r"conv2d_0.w_0 is float32\[2, 3, 5, 5\] but the program declares float32\[2, 3, 3, 3\]"):
        read_params(params_path, read_program(program_path))
    params_path.write_bytes(params_file({**tensors, "zz_extra": np.zeros(1, np.float32)}))
    with pytest.raises(LayoutModelError, match="more tensors than"):
        read_params(params_path, read_program(program_path))


def test_something_else_is_not_a_program(tmp_path):
    junk = tmp_path / "inference.pdmodel"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(LayoutModelError, match="not a paddle inference program"):
        read_program(junk)
    not_pir = tmp_path / "inference.json"
    not_pir.write_text("{}")
    with pytest.raises(LayoutModelError, match="not a paddle inference program"):
        read_program(not_pir)


def test_pairing_checks_every_shape_and_transposes_linear_weights(legacy):
    program = read_program(legacy[0])
    uses = [
        TorchUse("conv.weight", (2, 3, 3, 3), False, False),
        TorchUse("norm.position_ids", (7,), False, True),  # a buffer outside the state dict paddle lacks
        TorchUse("norm.running_mean", (2,), False, False),
        TorchUse("norm.running_var", (2,), False, False),
        TorchUse("norm.weight", (2,), False, False),
        TorchUse("norm.bias", (2,), False, False),
    ]
    pairs = pair_tensors(program, uses)
    assert pairs == {
        "conv.weight": ("conv2d_0.w_0", False),
        "norm.running_mean": ("batch_norm2d_0.w_1", False),
        "norm.running_var": ("batch_norm2d_0.w_2", False),
        "norm.weight": ("batch_norm2d_0.w_0", False),
        "norm.bias": ("batch_norm2d_0.b_0", False),
    }
    # "steps" is only measured (a shape op), never read: it needs no weight.
    with pytest.raises(LayoutModelError, match=r"parameter 1 of its program \(conv2d_0.w_0, \[2, 3, 3, 3\], read by conv2d\)"):
        pair_tensors(program, [TorchUse("conv.weight", (2, 3, 5, 5), False, False), *uses[2:]])
    with pytest.raises(LayoutModelError, match="transformers' model reads 1 weights its program does not have"):
        pair_tensors(program, [*uses, TorchUse("head.weight", (4,), False, False)])
