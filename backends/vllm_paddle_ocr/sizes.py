"""Byte sizes as people and vLLM's flags write them ("80GiB", "4G", "1.5 GB"), and as people read them."""

from __future__ import annotations

import math
import re

KiB = 1024
MiB = 1024**2
GiB = 1024**3

# Two- and three-letter units are unambiguous: "GiB" is binary, "GB" is decimal, in any case.
_LONG_UNITS = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024**4,
    "ki": KiB, "mi": MiB, "gi": GiB, "ti": 1024**4,
}
# One-letter units follow vLLM's own `human_readable_int` (vllm/utils/argparse_utils.py), which parses
# --kv-cache-memory-bytes and --max-num-batched-tokens: lowercase is decimal ("4g" = 4e9), uppercase is
# binary ("4G" = 4 GiB), so a value copied from a vLLM command line means the same here.
_SHORT_UNITS = {
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "K": KiB, "M": MiB, "G": GiB, "T": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Bytes from "80GiB", "80 GB", "4G" (vLLM's binary G), "4g" (decimal) or a plain integer."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"a size cannot be negative: {text}")
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (try 80GiB, 24GB, 4G or a number of bytes)")
    number, unit = match.groups()
    if not unit:
        factor = 1
    elif unit in _SHORT_UNITS:
        factor = _SHORT_UNITS[unit]
    elif unit.lower() in _LONG_UNITS:
        factor = _LONG_UNITS[unit.lower()]
    else:
        raise ValueError(f"unknown size unit {unit!r} in {text!r} (use B, KB/MB/GB/TB, KiB/MiB/GiB/TiB, or k/K/m/M/g/G)")
    value = float(number) * factor
    if "." in number and factor == 1:
        raise ValueError(f"a byte count must be whole: {text!r}")
    return int(math.ceil(value - 1e-9))


def format_bytes(n: int | float) -> str:
    """Bytes as a short binary figure for people: "7.45 GiB", "512 MiB", "900 B"."""
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value >= GiB:
        return f"{sign}{value / GiB:.2f} GiB"
    if value >= MiB:
        return f"{sign}{value / MiB:.0f} MiB"
    if value >= KiB:
        return f"{sign}{value / KiB:.0f} KiB"
    return f"{sign}{value:.0f} B"
