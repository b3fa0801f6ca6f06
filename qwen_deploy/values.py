"""Checks for the values that arrive from outside (command-line options, hardware files, plan files, model
configs, state records): the one place that says what a number, a name or a text may be.

Every check raises UsageError with a sentence naming the field, what it must be and what it was. Numbers are
finite and bounded (no NaN, no infinity, no 5,000-digit integers), written in ASCII digits (Python's int()
also takes '٣' and '³'), and a bool is never taken for a number.
"""

from __future__ import annotations

import math
import re
from typing import Any

from qwen_deploy.errors import UsageError

# Bounds for counts and sizes no real machine or model exceeds: they keep arithmetic on them sane.
MAX_COUNT = 10**9  # layers, heads, tokens, cores ...
MAX_BYTES = 2**60  # an exbibyte
_INT_TEXT = re.compile(r"[0-9]{1,18}")
_FLOAT_TEXT = re.compile(r"(?:[0-9]{1,18}(?:\.[0-9]{0,12})?|\.[0-9]{1,12})")


def show(value: Any, limit: int = 60) -> str:
    """A value as the error shows it: repr, cut short (a hostile file can hold megabytes in one field)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def integer(value: Any, where: str, lo: int = 0, hi: int = MAX_COUNT) -> int:
    """An int (not a bool, not a float, not a string) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{where} must be a whole number, not {show(value)}.")
    if not lo <= value <= hi:
        raise UsageError(f"{where} must be from {lo:,} to {hi:,}, not {show(value)}.")
    return value


def number(value: Any, where: str, lo: float = 0.0, hi: float = 1e18, lo_open: bool = False) -> float:
    """An int or float, finite, in [lo, hi] ((lo, hi] with lo_open)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where} must be a number, not {show(value)}.")
    if isinstance(value, int) and abs(value) > 10**18:
        raise UsageError(f"{where} must be from {lo:g} to {hi:g}, not {show(value)}.")
    value = float(value)
    if not math.isfinite(value) or value > hi or value < lo or (lo_open and value == lo):
        interval = f"more than {lo:g} and at most {hi:g}" if lo_open else f"from {lo:g} to {hi:g}"
        raise UsageError(f"{where} must be a number {interval}, not {show(value)}.")
    return value


def text(value: Any, where: str, max_len: int = 4096, allow_empty: bool = False) -> str:
    """A string of printable characters (no line breaks or control characters), at most max_len long."""
    if not isinstance(value, str):
        raise UsageError(f"{where} must be text, not {show(value)}.")
    if not value and not allow_empty:
        raise UsageError(f"{where} must not be empty.")
    if len(value) > max_len:
        raise UsageError(f"{where} is longer than {max_len:,} characters.")
    if not value.isprintable():
        raise UsageError(f"{where} {show(value)} contains a line break or control character.")
    return value


SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def server_name(value: Any, where: str = "--name") -> str:
    """Server names become file names and unit names: lower-case letters, digits, '.', '_', '-'."""
    if not isinstance(value, str) or not SERVER_NAME.match(value):
        raise UsageError(
            f"{where} {show(value)} is not a valid server name: use 1-63 lower-case letters, digits, '.', '_' "
            "or '-', starting with a letter or digit."
        )
    return value


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def host(value: Any, where: str = "--host") -> str:
    """An address to listen on: an IPv4 or IPv6 address (IPv6 without brackets: '::1', '::', 'fe80::1%eth0'), or
    a host name of dot-separated labels (letters, digits, inner '-'; one trailing '.' allowed). Nothing else
    reaches a command line or a file."""
    import ipaddress

    name = text(value, where, 253)
    bracketed = name.startswith("[") and name.endswith("]")
    address, percent, zone = (name[1:-1] if bracketed else name).partition("%")
    try:
        ipaddress.ip_address(address)
        is_ip = not percent or (":" in address and bool(_ZONE.fullmatch(zone)))
    except ValueError:
        is_ip = False
    if is_ip:
        if bracketed:
            raise UsageError(f"{where} {show(name)}: write an IPv6 address without brackets, such as ::1 or ::.")
        return name
    labels = name.removesuffix(".").split(".")
    if ":" in name or not all(_HOST_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise UsageError(
            f"{where} {show(name)} is not an IP address (such as 127.0.0.1, 0.0.0.0 or ::1) or a host name "
            "(letters, digits and inner '-', in labels joined by '.')."
        )
    return name


def int_text(raw: str, where: str, lo: int = 0, hi: int = MAX_COUNT) -> int:
    """A whole number written in ASCII digits (an option's value), in [lo, hi]."""
    stripped = str(raw).strip()
    if not _INT_TEXT.fullmatch(stripped):
        raise UsageError(f"{where} must be a whole number written in digits 0-9, not {show(raw)}.")
    return integer(int(stripped), where, lo, hi)


def float_text(raw: str, where: str, lo: float = 0.0, hi: float = 1e18, lo_open: bool = False) -> float:
    """A decimal number written in ASCII (no 'nan', 'inf' or exponents), in [lo, hi]."""
    stripped = str(raw).strip()
    if not _FLOAT_TEXT.fullmatch(stripped):
        raise UsageError(f"{where} must be a decimal number such as 0.9, not {show(raw)}.")
    return number(float(stripped), where, lo, hi, lo_open)


def mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping (key: value), not {show(value)}.")
    return value
