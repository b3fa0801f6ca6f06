"""Processes, from /proc: is one alive, is it provably the engine `up` started, stop its group (SIGTERM,
wait, SIGKILL), who holds a port, and a process's command line. Shared by the launcher, the state records,
`status`/`down` and the chat page's supervisor.

Nothing is signalled on a record's word alone. A process counts as ours only when all of these hold: its pid
is above 1 and is neither this process nor in this process's group; its start time (field 22 of
/proc/PID/stat) is the one recorded at spawn; it leads its own session and process group (`up` starts every
engine with setsid); and its environment carries the instance token `up` gave it (QWEN_DEPLOY_INSTANCE,
random per launch, inherited by every child). Members of a dead leader's group are stopped one by one, each
only after the same token check.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

INSTANCE_ENV = "QWEN_DEPLOY_INSTANCE"
STOP_GRACE_SECONDS = 15.0


def _stat_fields(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state first); None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    return text[text.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot; None when there is none (or a zombie)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[19])


def _pgid_sid(pid: int | str) -> tuple[int, int] | None:
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None
    return int(fields[2]), int(fields[3])


def _environ_has(pid: int | str, token: str) -> bool:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False  # gone, or another user's: not ours either way
    return f"{INSTANCE_ENV}={token}".encode() in raw.split(b"\0")


def new_token() -> str:
    """32 random hex digits (os.urandom: `secrets` would import hashlib before the engine is spawned)."""
    return os.urandom(16).hex()


@dataclass(frozen=True)
class Owned:
    """What `up` recorded at spawn to recognise its engine later."""

    pid: int
    start_ticks: int
    token: str

    def safe_pid(self) -> bool:
        return self.pid > 1 and self.pid != os.getpid() and self.pid != os.getpgrp()

    def leader_alive(self) -> bool:
        """The engine itself is alive and provably ours."""
        if not self.safe_pid() or not self.token or process_start_ticks(self.pid) != self.start_ticks:
            return False
        ids = _pgid_sid(self.pid)
        return ids == (self.pid, self.pid) and _environ_has(self.pid, self.token)

    def members(self) -> list[int]:
        """Live processes of the engine's group that carry its token (the leader included)."""
        if not self.safe_pid() or not self.token:
            return []
        own_group = os.getpgrp()
        found = []
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            ids = _pgid_sid(pid_dir.name)
            pid = int(pid_dir.name)
            if ids and ids[0] == self.pid and ids[0] != own_group and pid > 1 and _environ_has(pid, self.token):
                found.append(pid)
        return found

    def leader_exiting(self) -> bool:
        """The recorded process (same pid and start time) still exists, not yet a zombie: while it exits
        its /proc environ reads empty, so leader_alive() already says no, though it may still hold its
        port."""
        return self.safe_pid() and bool(self.start_ticks) and process_start_ticks(self.pid) == self.start_ticks

    def gone(self) -> bool:
        """Neither the recorded process (alive or exiting; leader_alive() implies leader_exiting()) nor a
        member of its group is left."""
        return not self.leader_exiting() and not self.members()

    def orphans_alive(self) -> bool:
        """The leader is gone but members of its group live on (vLLM's engine core after its API server
        died)."""
        return not self.leader_alive() and bool(self.members())


def _signal_owned(owned: Owned, sig: int) -> bool:
    """Send `sig` to the engine's group (leader verified) or to each verified member; False: none left."""
    if owned.leader_alive():
        try:
            os.killpg(owned.pid, sig)
            return True
        except ProcessLookupError:
            return False
    sent = False
    for pid in owned.members():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent = True
    return sent


def stop_owned(owned: Owned, grace: float = STOP_GRACE_SECONDS) -> str:
    """SIGTERM what is provably ours of a recorded engine, wait up to `grace` seconds, then SIGKILL."""
    if not _signal_owned(owned, signal.SIGTERM):
        return "already gone"
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if owned.gone():
            return "stopped"
        time.sleep(0.05)
    _signal_owned(owned, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not owned.gone():
        time.sleep(0.05)
    return "killed"


def stop_group(pid: int, grace: float = STOP_GRACE_SECONDS, proc: subprocess.Popen | None = None) -> str:
    """SIGTERM the process group led by a child this process spawned (`proc`, a Popen it still holds, so the
    pid cannot have been reused), wait up to `grace` seconds, then SIGKILL. Returns how it ended."""
    if pid <= 1 or pid == os.getpgrp():
        raise ValueError(f"refusing to signal process group {pid}")
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
            ids = _pgid_sid(pid_dir.name)
            if ids is not None and ids[0] == pgid:
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


# ----------------------------------------------------------------------------- ports and command lines


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    return inodes


def port_owner(port: int) -> int | None:
    """The pid listening on `port`, when /proc lets us see it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            for fd in (pid_dir / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(pid_dir.name)
        except OSError:
            continue
    return None


def cmdline(pid: int | None, limit: int = 80) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return "?"
    text = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return text if len(text) <= limit else text[: limit - 3] + "..."
