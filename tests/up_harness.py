"""Run `qwen-deploy` as a real subprocess (so signals, kill -9 and process groups behave as for a user), and
find every process a test left behind by a tag in its environment."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

TAG_VAR = "QWEN_DEPLOY_TEST_TAG"


def new_tag() -> str:
    return uuid.uuid4().hex


def tagged_pids(tag: str) -> list[int]:
    """Processes whose environment carries TAG_VAR=tag (the engine inherits it from `up`)."""
    needle = f"{TAG_VAR}={tag}".encode()
    found = []
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            if needle in (pid_dir / "environ").read_bytes().split(b"\0"):
                stat = (pid_dir / "stat").read_text()
                if stat[stat.rindex(")") + 2] != "Z":
                    found.append(int(pid_dir.name))
        except OSError:
            continue
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


class QD:
    """`python -m qwen_deploy ...` with this test's environment."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "qwen_deploy", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "qwen_deploy", *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def status(self) -> dict:
        result = self.run("status", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    @property
    def state_dir(self) -> Path:
        return Path(self.env["QWEN_DEPLOY_STATE_DIR"])

    def record(self, name: str) -> dict | None:
        try:
            return json.loads((self.state_dir / "servers" / f"{name}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait_record(self, name: str, timeout: float = 60, state: str | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.record(name)
            if record and (state is None or record["state"] == state):
                return record
            time.sleep(0.02)
        raise AssertionError(f"no {state or ''} record for {name} after {timeout}s")


def read_until(stream, needle: str, timeout: float = 120) -> str:
    """Read a text pipe until a line containing `needle` arrives; returns what was read."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.1)
        if ready:
            line = stream.readline()
            if not line:
                break
            seen += line
            if needle in line:
                return seen
    raise AssertionError(f"{needle!r} did not appear; got:\n{seen}")


def port_listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"
