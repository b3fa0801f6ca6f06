"""Sizes: parse '24GiB', '24GB', '512MiB', '1.5TiB' or plain bytes into int bytes, and format them back."""

from __future__ import annotations

import re

from qwen_deploy.errors import UsageError
from qwen_deploy.values import show

GiB = 1024**3
MiB = 1024**2

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
# ASCII digits only (\d would also take '٣'), at most 18 before and 12 after the point: no 5,000-digit sizes.
_SIZE_RE = re.compile(r"^\s*([0-9]{1,18}(?:\.[0-9]{0,12})?|\.[0-9]{1,12})\s*([a-zA-Z]{0,3})\s*$")
MAX_SIZE = 2**60  # an exbibyte: more than any machine this plans for


def parse_size(text: str | int) -> int:
    """Bytes from a size: an int, '24GiB' (2^30), '24GB' (10^9), '512MiB', '1.5TiB', '1000'."""
    if isinstance(text, bool):
        raise UsageError(f"{text!r} is not a size; write bytes or a unit such as 24GiB or 512MiB.")
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"size {text} is negative; sizes are zero or more bytes.")
        if text > MAX_SIZE:
            raise UsageError(f"size {text} is more than an exbibyte; no machine has that.")
        return text
    if not isinstance(text, str) or not text.strip():
        raise UsageError("a size must not be empty; write bytes or a unit such as 24GiB or 512MiB.")
    match = _SIZE_RE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise UsageError(
            f"{show(text)} is not a size; write bytes or a number with a unit: 24GiB, 24GB (10^9), 512MiB, 1.5TiB."
        )
    number, unit = match.groups()
    multiplier = _UNITS[unit.lower()]
    if "." in number:
        # Decimal arithmetic on the digits avoids float rounding: '1.1GB' is exactly 1_100_000_000.
        whole, _, frac = number.partition(".")
        scaled = int(whole or "0") * 10 ** len(frac) + int(frac or "0")
        size = scaled * multiplier // 10 ** len(frac)
    else:
        size = int(number) * multiplier
    if size > MAX_SIZE:
        raise UsageError(f"{show(text)} is more than an exbibyte; no machine has that.")
    return size


def format_size(n_bytes: int | float) -> str:
    """'7.49 GiB', '576.0 MiB', '512 B': binary units, as the engines print them."""
    value = float(n_bytes)
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value >= GiB:
        return f"{sign}{value / GiB:.2f} GiB"
    if value >= MiB:
        return f"{sign}{value / MiB:.1f} MiB"
    if value >= 1024:
        return f"{sign}{value / 1024:.1f} KiB"
    return f"{sign}{int(value)} B"
