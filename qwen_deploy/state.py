"""The state directory: one record per server `up` started, its log, and the plan it ran.

Where: paths.state_dir(). Layout: `servers/NAME.json` (the record), `logs/NAME.log` (the engine's stdout and
stderr), `plans/NAME.json` (the plan it runs), `lock` (flock while records are checked and written). The
folder is 0700 and every file in it 0600: records name processes and key files, logs hold prompts.

A record is input like any file: every field is checked when it is read (name, pids, port, start time,
paths inside the state directory), a bad record is reported in one sentence and skipped, and nothing is
signalled or deleted on its word alone (procs.Owned: start time, session and the instance token). Only paths
inside the state directory are ever written or removed, and a record is only removed by the name of the
file it was read from.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from qwen_deploy import values
from qwen_deploy.client import describe_bind, url_for
from qwen_deploy.errors import QwenDeployError
from qwen_deploy.paths import state_dir
from qwen_deploy.procs import Owned
from qwen_deploy.resources import write_atomic

STATE_SCHEMA = "qwen-deploy/state/v2"
NAME_RE = values.SERVER_NAME
PID_MAX = 1 << 22  # the kernel's limit (pid_max is at most 2^22)
MAX_RECORD_BYTES = 1024**2
STATES = ("starting", "ready", "stopping")
MODES = ("foreground", "detached")


def check_name(name: str) -> str:
    return values.server_name(name)


def default_name(served_name: str) -> str:
    """A valid name from the model's served name ('Qwen3-4B-Instruct-2507' -> 'qwen3-4b-instruct-2507')."""
    name = re.sub(r"[^a-z0-9._-]+", "-", served_name.lower()).strip("-._")[:63]
    return name or "model"


def ensure_dir(path: Path) -> Path:
    """A folder of the state directory, created 0700 (and made so if it already exists and is ours)."""
    root = state_dir()
    for folder in [root, *(p for p in reversed(path.parents) if p.is_relative_to(root) and p != root), path]:
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            raise QwenDeployError(
                f"{folder} should be a folder of qwen-deploy's state and is not. To fix: move it away "
                "(or point QWEN_DEPLOY_STATE_DIR elsewhere)."
            )
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            if folder.stat().st_uid == os.getuid() and stat.S_IMODE(folder.stat().st_mode) != 0o700:
                folder.chmod(0o700)
        except OSError as exc:
            raise QwenDeployError(f"cannot create {folder}: {exc.strerror or exc}.") from None
    return path


def log_path(name: str) -> Path:
    return state_dir() / "logs" / f"{check_name(name)}.log"


def plan_path(name: str) -> Path:
    return state_dir() / "plans" / f"{check_name(name)}.json"


def _record_path(name: str) -> Path:
    return state_dir() / "servers" / f"{check_name(name)}.json"


def open_log(name: str) -> int:
    """The engine's log, opened for appending (0600): a file descriptor."""
    path = log_path(name)
    ensure_dir(path.parent)
    if path.is_symlink():
        raise QwenDeployError(f"{path} is a symbolic link; qwen-deploy writes logs only to its own files.")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


@dataclass(frozen=True)
class Record:
    name: str
    pid: int  # the engine; it leads its own session and process group (pgid == sid == pid)
    start_ticks: int
    token: str  # the instance token in the engine's environment (procs.INSTANCE_ENV)
    engine: str
    host: str
    port: int
    served_name: str
    model: str
    context: int
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
        return url_for(self.host, self.port)

    @property
    def bind(self) -> str:
        return describe_bind(self.host, self.port)

    @property
    def log(self) -> str:
        return str(log_path(self.name))

    @property
    def plan(self) -> str:
        return str(plan_path(self.name))

    @property
    def owned(self) -> Owned:
        return Owned(self.pid, self.start_ticks, self.token)

    def alive(self) -> bool:
        return self.owned.leader_alive()

    def orphans_alive(self) -> bool:
        return self.owned.orphans_alive()

    def to_dict(self) -> dict[str, Any]:
        data = {"schema": STATE_SCHEMA, **asdict(self)}
        return {**data, "url": self.url, "bind": self.bind, "log": self.log, "plan": self.plan}


class BadRecord(Exception):
    """A record that cannot be trusted: the sentence says what is wrong with it."""


def _require(data: dict[str, Any], key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    value = data.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise BadRecord(f"its {key!r} is not a {getattr(kind, '__name__', kind)}")
    return value


def record_from(data: Any, file_name: str) -> Record:
    """A Record from a file's JSON, every field checked; BadRecord says what is wrong."""
    from qwen_deploy.values import show

    if not isinstance(data, dict):
        raise BadRecord("it is not a JSON object")
    if data.get("schema") != STATE_SCHEMA:
        raise BadRecord(f"its schema is {show(data.get('schema'))}, not {STATE_SCHEMA} (an older qwen-deploy?)")
    name = _require(data, "name", str)
    if name != file_name or not NAME_RE.match(name):
        raise BadRecord(f"its name {show(name)} is not the file's name")
    pid = _require(data, "pid", int)
    if not 1 < pid < PID_MAX:
        raise BadRecord(f"its pid {pid} is not one qwen-deploy could have started")
    up_pid = _require(data, "up_pid", int, optional=True)
    if up_pid is not None and not 1 < up_pid < PID_MAX:
        raise BadRecord(f"its up_pid {up_pid} is out of range")
    port = _require(data, "port", int)
    if not 1 <= port <= 65535:
        raise BadRecord(f"its port {port} is outside 1-65535")
    ticks = _require(data, "start_ticks", int)
    if ticks < 0:
        raise BadRecord("its start_ticks is negative")
    token = _require(data, "token", str)
    if not re.fullmatch(r"[0-9a-f]{32}", token):
        raise BadRecord("its instance token is malformed")
    command = _require(data, "command", list)
    if not all(isinstance(a, str) for a in command):
        raise BadRecord("its command is not a list of strings")
    for key in ("engine", "host", "served_name", "model"):
        text = _require(data, key, str)
        if not text.isprintable() or len(text) > 4096:
            raise BadRecord(f"its {key!r} holds control characters or is too long")
    for key in ("started_at", "ready_at"):
        value = _require(data, key, (int, float), optional=key == "ready_at")
        if value is not None and not math.isfinite(value):
            raise BadRecord(f"its {key!r} is not a finite time")
    context = _require(data, "context", int)
    if not 0 <= context < 1 << 31:
        raise BadRecord("its context is out of range")
    if data.get("mode") not in MODES or data.get("state", "starting") not in STATES:
        raise BadRecord("its mode or state is not one qwen-deploy writes")
    key_file = _require(data, "api_key_file", str, optional=True)
    if key_file is not None and (not key_file.isprintable() or not Path(key_file).is_absolute()):
        raise BadRecord("its api_key_file is not an absolute path")
    attempt = _require(data, "attempt", int, optional=True) or 1
    if not 1 <= attempt <= 100:
        raise BadRecord("its attempt count is out of range")
    known = set(Record.__dataclass_fields__)
    return Record(**{k: v for k, v in data.items() if k in known})


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the state directory's lock (records are checked and written under it)."""
    root = ensure_dir(state_dir())
    lock = root / "lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise QwenDeployError(f"cannot open the state lock {lock}: {exc.strerror or exc}.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write(record: Record) -> None:
    ensure_dir(state_dir() / "servers")
    write_atomic(_record_path(record.name), json.dumps(record.to_dict(), indent=2) + "\n", mode=0o600)


def write_plan(name: str, data: dict[str, Any]) -> None:
    ensure_dir(state_dir() / "plans")
    write_atomic(plan_path(name), json.dumps(data, indent=2) + "\n", mode=0o600)


def update(record: Record, **changes: Any) -> Record:
    new = replace(record, **changes)
    write(new)
    return new


def _remove(name: str) -> None:
    path = _record_path(name)
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        path.unlink()


def remove_if(name: str, pid: int) -> None:
    """Remove `name`'s record only while it is still the one for `pid` (a newer `up` may own the name)."""
    with locked():
        current = read(name)
        if current is not None and current.pid == pid:
            _remove(name)


def _read_path(path: Path) -> Record:
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise BadRecord("it was removed while being read") from None
    if not stat.S_ISREG(info.st_mode):
        raise BadRecord("it is not a regular file")
    if info.st_size > MAX_RECORD_BYTES:
        raise BadRecord("it is far larger than a record")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise BadRecord(f"it cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadRecord("it is not valid JSON") from None
    return record_from(data, path.stem)


def read(name: str) -> Record | None:
    """The record called `name`, or None when there is none or it cannot be trusted."""
    try:
        return _read_path(_record_path(name))
    except BadRecord:
        return None


def scan() -> tuple[list[Record], list[str]]:
    """(every good record by name, one sentence per bad one). The bad ones are left where they are."""
    folder = state_dir() / "servers"
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        return [], [f"{folder} is not a folder: no records can be read (move it away)."]
    good, bad = [], []
    try:
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError as exc:
        return [], [f"{folder} cannot be listed ({exc.strerror or exc})."]
    for path in entries:
        if path.suffix != ".json" or path.name.startswith("."):
            continue  # a temp file of write_atomic, or not ours
        if not NAME_RE.match(path.stem):
            bad.append(f"{path}: ignored, its name is not a server name.")
            continue
        try:
            good.append(_read_path(path))
        except BadRecord as exc:
            bad.append(f"{path}: ignored, {exc}; remove it by hand if it is not needed.")
    return good, bad


def records() -> list[Record]:
    """Every record that can be trusted, by name."""
    return scan()[0]


def reap_stale() -> list[Record]:
    """Remove the records whose engine is gone (or whose pid now belongs to another process); members of
    a dead engine's group that carry its token are stopped first, so nothing is left holding memory or a GPU."""
    from qwen_deploy.procs import stop_owned

    stale = [r for r in records() if not r.alive()]
    for record in stale:
        if record.orphans_alive():
            stop_owned(record.owned)
        _remove(record.name)
    return stale


def status_row(record: Record) -> dict[str, Any]:
    """What `status` shows of a record: the record, whether the server answers now, its uptime. A record
    still 'starting' whose `up` died (kill -9) but whose server answers is marked ready (what is true now)."""
    import time

    from qwen_deploy import engines
    from qwen_deploy.client import Endpoint, HTTPFailure
    from qwen_deploy.procs import process_start_ticks

    try:
        ready_path = engines.get(record.engine).ready_path
    except QwenDeployError:
        ready_path = "/v1/models"  # an engine this installation does not know
    try:
        Endpoint(record.url).get(ready_path, timeout=1.0)
        answering = True
    except HTTPFailure as exc:
        answering = exc.status == 401  # it answers; it wants the key
    up_alive = record.up_pid is not None and process_start_ticks(record.up_pid) is not None
    if record.state == "starting" and answering and not up_alive:
        record = update(record, state="ready", ready_at=time.time())
    row = record.to_dict()
    row.update(answering=answering, uptime_s=round(time.time() - record.started_at, 1))
    return row
