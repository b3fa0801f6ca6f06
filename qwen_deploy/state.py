"""The state directory: one record per server `up` started, its log, and the plan it ran.

Where: $QWEN_DEPLOY_STATE_DIR, else $XDG_STATE_HOME/qwen-deploy, else ~/.local/state/qwen-deploy.
Layout: `servers/NAME.json` (the record), `logs/NAME.log` (the engine's stdout and stderr),
`plans/NAME.json` (the plan it runs), `lock` (flock while records are checked and written).

A record is never trusted on its own: a process counts as ours only while /proc/PID exists *and* its start
time (field 22 of /proc/PID/stat) equals the one recorded, so a reused PID is never signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from qwen_deploy.errors import UsageError
from qwen_deploy.procs import group_alive, process_start_ticks, stop_group
from qwen_deploy.resources import write_atomic

STATE_SCHEMA = "qwen-deploy/state/v1"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


def state_dir() -> Path:
    override = os.environ.get("QWEN_DEPLOY_STATE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "qwen-deploy"


def check_name(name: str) -> str:
    """Server names become file names and unit names: lower-case letters, digits, '.', '_', '-'."""
    if not NAME_RE.match(name):
        raise UsageError(
            f"--name {name!r} is not a valid server name: use 1-63 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return name


def default_name(served_name: str) -> str:
    """A valid name from the model's served name ('Qwen3-4B-Instruct-2507' -> 'qwen3-4b-instruct-2507')."""
    name = re.sub(r"[^a-z0-9._-]+", "-", served_name.lower()).strip("-._")[:63]
    return name or "model"


def log_path(name: str) -> Path:
    return state_dir() / "logs" / f"{name}.log"


def plan_path(name: str) -> Path:
    return state_dir() / "plans" / f"{name}.json"


def _record_path(name: str) -> Path:
    return state_dir() / "servers" / f"{name}.json"


@dataclass(frozen=True)
class Record:
    name: str
    pid: int  # the engine; it leads its own process group (pgid == pid)
    start_ticks: int
    engine: str
    host: str
    port: int
    served_name: str
    model: str
    context: int
    log: str
    plan: str
    command: list[str]
    started_at: float
    mode: str  # foreground | detached
    state: str = "starting"  # starting | ready | stopping
    ready_at: float | None = None
    up_pid: int | None = None  # the `up` that launched (and, in the foreground, supervises) it
    api_key_file: str | None = None
    attempt: int = 1

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def alive(self) -> bool:
        return process_start_ticks(self.pid) == self.start_ticks

    def orphans_alive(self) -> bool:
        """The leader is gone but members of its group live on (vLLM's engine core after its API server
        died). A PID cannot be reused as a group id while the group has members, so they are ours."""
        return not self.alive() and group_alive(self.pid)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": STATE_SCHEMA, **asdict(self), "url": self.url}


def _record_from(data: dict[str, Any]) -> Record | None:
    if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
        return None
    known = set(Record.__dataclass_fields__)
    try:
        return Record(**{k: v for k, v in data.items() if k in known})
    except TypeError:
        return None


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the state directory's lock (records are checked and written under it)."""
    root = state_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write(record: Record) -> None:
    write_atomic(_record_path(record.name), json.dumps(record.to_dict(), indent=2) + "\n", mode=0o600)


def update(record: Record, **changes: Any) -> Record:
    new = replace(record, **changes)
    write(new)
    return new


def remove(name: str) -> None:
    _record_path(name).unlink(missing_ok=True)


def remove_if(name: str, pid: int) -> None:
    """Remove `name`'s record only while it is still the one for `pid` (a newer `up` may own the name)."""
    with locked():
        current = read(name)
        if current is not None and current.pid == pid:
            remove(name)


def read(name: str) -> Record | None:
    try:
        return _record_from(json.loads(_record_path(name).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def records() -> list[Record]:
    """Every record that parses, by name. Unreadable files are skipped (and reported by `status`)."""
    folder = state_dir() / "servers"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        record = read(path.stem)
        if record is not None:
            out.append(record)
    return out


def reap_stale() -> list[Record]:
    """Remove the records whose process is gone (or whose PID now belongs to another process); members of
    a dead leader's group that live on are stopped first, so nothing is left holding memory or a GPU."""
    stale = [r for r in records() if not r.alive()]
    for record in stale:
        if record.orphans_alive():
            stop_group(record.pid)
        remove(record.name)
    return stale
