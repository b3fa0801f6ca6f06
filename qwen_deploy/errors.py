"""The one error hierarchy: every failure a user can cause or fix, with the exit code the CLI maps it to.

Exit codes (design.md, README): 0 ok · 1 error · 2 usage · 3 nothing fits · 4 the engine failed to become
ready, or stopped on its own after it was (`up`) · 5 `verify`: the context did not serve · 128+N `up` was
stopped by signal N before the engine was ready (130 for Ctrl-C). The CLI catches these by type.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOTHING_FITS = 3
EXIT_ENGINE = 4
EXIT_VERIFY = 5


class QwenDeployError(Exception):
    """A failure explained in one sentence a user can act on."""

    exit_code = EXIT_ERROR


class UsageError(QwenDeployError):
    """Bad input: a malformed option value, file or combination of flags."""

    exit_code = EXIT_USAGE


class NothingFitsError(QwenDeployError):
    """No candidate fits the hardware; the message ends with a 'To fix:' hint."""

    exit_code = EXIT_NOTHING_FITS


class ModelNotHere(UsageError):
    """A file that must be on this machine (a systemd unit's model) is not."""


class EngineFailed(QwenDeployError):
    """The engine exited, or never became ready; the message carries the log tail and the diagnosis."""

    exit_code = EXIT_ENGINE

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.kind = kind


class VerifyFailed(QwenDeployError):
    """`verify` ran and the planned context did not serve."""

    exit_code = EXIT_VERIFY


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP reached `up` (raised from its signal handler; exit 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
