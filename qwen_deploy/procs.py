"""Process groups: is one alive, stop it (SIGTERM, wait, SIGKILL), and a process's start time (to tell a
reused PID from ours). Shared by the launcher, the state records and `down`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path


def _stat_fields(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot; None when there is none (or a zombie)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


STOP_GRACE_SECONDS = 15.0


def stop_group(pid: int, grace: float = STOP_GRACE_SECONDS, proc: subprocess.Popen | None = None) -> str:
    """SIGTERM the process group led by pid, wait up to `grace` seconds, then SIGKILL. Returns how it ended."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        _reap(proc)
        return "already gone"
    if wait_gone(pid, grace, proc):
        return "stopped"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    wait_gone(pid, 5.0, proc)
    return "killed"


def _reap(proc: subprocess.Popen | None) -> None:
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # members that are zombies still count for killpg(0); look for a live one
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            rest = _stat_fields(pid_dir.name)
            if rest is not None and int(rest[2]) == pgid and rest[0] != "Z":
                return True
    return False


def wait_gone(pid: int, timeout: float, proc: subprocess.Popen | None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(proc)
        if not group_alive(pid):
            return True
        time.sleep(0.05)
    return not group_alive(pid)
