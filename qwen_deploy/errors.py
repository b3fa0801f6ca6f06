"""The one error hierarchy: every failure a user can cause or fix, with the exit code the CLI maps it to.

Exit codes (design.md): 0 ok · 1 error · 2 usage · 3 nothing fits · 4 the engine failed to become ready, or
stopped on its own after it was (`up`) · 5 `verify`: the context did not serve · 128+N `up` was stopped by
signal N before the engine was ready (130 for Ctrl-C).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOTHING_FITS = 3
EXIT_ENGINE = 4


class QwenDeployError(Exception):
    """A failure explained in one sentence a user can act on."""

    exit_code = EXIT_ERROR


class UsageError(QwenDeployError):
    """Bad input: a malformed option value, file or combination of flags."""

    exit_code = EXIT_USAGE


class NothingFitsError(QwenDeployError):
    """No candidate fits the hardware; the message ends with a 'To fix:' hint."""

    exit_code = EXIT_NOTHING_FITS
