"""One module per engine: the argv a plan runs, and the engine's own log lines (memory, readiness, OOM)."""

import functools
import re


def module(engine: str):
    """The module for an engine name ('llamacpp' or 'vllm')."""
    from qwen_deploy.engines import llamacpp, vllm

    return {"llamacpp": llamacpp, "vllm": vllm}[engine]


@functools.cache
def log_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a log pattern on first use: planning never parses logs, so it never pays for them."""
    return re.compile(pattern)
