"""Sizes: the table of forms users write, and properties over generated input."""

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qwen_deploy.errors import UsageError
from qwen_deploy.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 * 1024**3),
        ("24GB", 24 * 10**9),
        ("24gb", 24 * 10**9),
        ("512MiB", 512 * 1024**2),
        ("1.5TiB", 1024**4 + 512 * 1024**3),
        ("1.1GB", 1_100_000_000),  # decimal arithmetic: no float rounding
        ("1000", 1000),
        (" 16 GiB ", 16 * 1024**3),
        ("0", 0),
        (4096, 4096),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "-1GiB", "12 parsecs", "1.2.3GB", "1e9", "twelve", True, -5])
def test_parse_size_rejects_with_a_sentence(text):
    with pytest.raises(UsageError, match="size"):
        parse_size(text)


UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(UNITS)))
def test_whole_numbers_scale_by_their_unit(n, unit):
    assert parse_size(f"{n}{unit}") == n * UNITS[unit]


@given(
    st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=99), st.sampled_from(["GiB", "GB"])
)
def test_two_decimals_are_exact(whole, hundredths, unit):
    assert parse_size(f"{whole}.{hundredths:02d}{unit}") == (whole * 100 + hundredths) * UNITS[unit] // 100


@given(st.text(max_size=20))
def test_any_text_parses_or_raises_usage_error(text):
    with contextlib.suppress(UsageError):
        assert parse_size(text) >= 0


def test_format_size():
    assert format_size(576 * 1024**2) == "576.0 MiB"
    assert format_size(36 * 1024**3) == "36.00 GiB"
    assert format_size(512) == "512 B"
