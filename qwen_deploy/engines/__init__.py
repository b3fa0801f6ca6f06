"""One module per engine: the argv a plan runs, and the engine's own log lines (memory, readiness, OOM)."""

import functools
import re


@functools.cache
def log_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a log pattern on first use: planning never parses logs, so it never pays for them."""
    return re.compile(pattern)
