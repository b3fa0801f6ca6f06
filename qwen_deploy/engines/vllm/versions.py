"""vLLM releases the memory rules cover, and reading a version string. Pure."""

from __future__ import annotations

import re

GiB = 1 << 30
MiB = 1 << 20

VLLM_BLOCK_SIZE = 16  # config/cache.py DEFAULT_BLOCK_SIZE (every release read)

RULES_MIN = (0, 10)  # first release modelled (0.9.x: profile/sampler paths not read in full -> NotModelled)
RULES_MAX = (0, 33)  # newest release read (0.33.0 is the project's pin)


class NotModelled(ValueError):
    """The version (or a launch feature) is outside what these rules were derived for."""


# ----------------------------------------------------------------------------- versions


def parse_version(text: str) -> tuple[int, int, int]:
    """'0.19.1' -> (0, 19, 1); '0.10.1.1' -> (0, 10, 1); 'v0.16.0 (container tag)' -> (0, 16, 0)."""
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        raise ValueError(f"no version in {text!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _v(version: str | tuple[int, int, int]) -> tuple[int, int, int]:
    v = parse_version(version) if isinstance(version, str) else version
    if v[:2] < RULES_MIN:
        raise NotModelled(
            f"vLLM {'.'.join(map(str, v))} is older than {RULES_MIN[0]}.{RULES_MIN[1]}: not modelled "
            "(its profile run, sampler and CUDA-graph defaults were not derived)"
        )
    if v[:2] > RULES_MAX:
        raise NotModelled(f"vLLM {'.'.join(map(str, v))} is newer than the newest release read (0.33.0)")
    return v


def modelled(version: str) -> tuple[int, int, int]:
    """The version as a tuple, or NotModelled (a sentence) when these rules do not cover it."""
    return _v(version)
