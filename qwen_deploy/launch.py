"""Start the planned engine, wait until it has answered a real completion, supervise it, stop it cleanly,
and step down to the next candidate when it runs out of memory.

The engine runs in its own session (its own process group) with stdout and stderr appended to
`logs/NAME.log` in the state directory. Stopping sends SIGTERM to the whole group, waits, then SIGKILL.
Ready means: the process is alive, the port answers (/health for vLLM, /v1/models for llama-cpp-python),
the served model is listed, and a one-token chat completion succeeded.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from qwen_deploy import state
from qwen_deploy.client import Endpoint, HTTPFailure, http_stack, port_open
from qwen_deploy.engines import log_pattern, module
from qwen_deploy.errors import EXIT_ENGINE, QwenDeployError, UsageError
from qwen_deploy.planner import Candidate, Plan, Request
from qwen_deploy.procs import process_start_ticks, stop_group
from qwen_deploy.units import format_size

# How often `up`/`wait` look at the engine: while its port refuses connections a round (a refused connect,
# a waitpid, a read of the log's new bytes) costs ~0.1 ms, so every 25 ms keeps the check's own lag small next
# to an engine that starts in under a second. Once the port accepts and the HTTP check still fails (a server
# answering 503, or failing completions), rounds are 100 ms apart, not to flood it (or its log).
POLL_SECONDS = 0.025
HTTP_RETRY_SECONDS = 0.1
LOG_TAIL_LINES = 25

ADVICE = {
    "oom": "the engine ran out of memory",
    "port": "the port is already in use: pick another with --port, or stop what holds it",
    "missing_file": "a file the engine needs is missing: check the model path",
    "corrupt": "the model file is corrupt or not a GGUF the engine can read: download it again",
    "not_installed": "the engine is not installed: pip install 'qwen-deploy[llamacpp]' (see README)",
    "cpu_unsupported": "the engine build uses CPU instructions this CPU lacks: reinstall it for this CPU",
    "gpu_busy": "other processes hold GPU memory: stop them or lower --gpu-memory-utilization",
    "gpu_unsupported": "this GPU is not supported by the installed vLLM/PyTorch build (or by this precision)",
    "no_gpu": "vLLM found no usable NVIDIA GPU",
}


class EngineFailed(QwenDeployError):
    """The engine exited, or never became ready; the message carries the log tail and the diagnosis."""

    exit_code = EXIT_ENGINE

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        self.kind = kind


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP reached `up` (raised from the signal handler)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# ----------------------------------------------------------------------------- what to run


@dataclass(frozen=True)
class Launch:
    name: str
    candidate: Candidate  # with the local model path and this run's host/port in its args and command
    env: dict[str, str]
    host: str
    port: int
    served_name: str
    model_id: str
    api_key: str | None = None
    api_key_file: str | None = None
    memory_limit_bytes: int | None = None
    timeout_s: float = 600.0

    @property
    def argv(self) -> tuple[str, ...]:
        return self.candidate.command


def expected_load_seconds(candidate: Candidate) -> float:
    """A generous guess of the time to ready: weights read at 200 MB/s from a cold disk, plus the engine's
    own start-up (vLLM profiles memory and captures CUDA graphs: a few minutes at most)."""
    read = candidate.memory.weights_bytes / 200e6
    return read + (300.0 if candidate.engine == "vllm" else 30.0)


def default_timeout(candidate: Candidate) -> float:
    return max(120.0, 3 * expected_load_seconds(candidate))


def with_args(candidate: Candidate, model_path: str, host: str, port: int) -> Candidate:
    """The candidate with the model's local path and the host/port this run binds, in args and command."""
    args = {**candidate.engine_args, "model": model_path, "host": host, "port": port}
    return replace(candidate, engine_args=args, command=tuple(module(candidate.engine).command(args)))


def build_argv(candidate: Candidate, model_path: str, host: str, port: int) -> tuple[str, ...]:
    return with_args(candidate, model_path, host, port).command


# ----------------------------------------------------------------------------- ports


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


def check_port_free(host: str, port: int) -> None:
    """Bind the port the way uvicorn does (SO_REUSEADDR) and let go: in use -> an error naming the holder."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                owner = port_owner(port)
                held = f" by pid {owner} ({_cmdline(owner)})" if owner else ""
                raise QwenDeployError(
                    f"port {port} on {host} is already in use{held}. "
                    "To fix: pass another --port (or --port auto), or stop what holds it."
                ) from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise UsageError(f"--host {host} is not an address of this machine.") from None
            raise QwenDeployError(f"cannot bind {host}:{port}: {exc.strerror}.") from None


def _cmdline(pid: int | None) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    text = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return text if len(text) <= 80 else text[:77] + "..."


# ----------------------------------------------------------------------------- the engine's log


class LogReader:
    """Reads what the engine appended to its log since this attempt began (and remembers the cgroup's OOM
    kill count at the spawn, to tell the kernel's OOM killer from any other SIGKILL)."""

    def __init__(self, path: Path, offset: int, oom_kills_before: int | None = None):
        self.path, self.offset, self.text = path, offset, ""
        self.oom_kills_before = oom_kills_before
        self.stage: str | None = None  # the latest start-up stage seen (see stage_of)
        self._pending = b""  # the bytes of a UTF-8 character cut by the last read

    def poll(self) -> str:
        """Read what was appended since the last poll (only that: the log can grow to megabytes)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                raw = self._pending + handle.read()
        except OSError:
            return ""
        self.offset += len(raw) - len(self._pending)
        cut = _incomplete_utf8_tail(raw)
        self._pending = raw[len(raw) - cut :] if cut else b""
        new = raw[: len(raw) - cut].decode(errors="replace")
        self.text += new
        return new

    def poll_stage(self, engine: str) -> str | None:
        """Poll, and return the latest stage the log has reached; only the new text (from the start of the
        line it continues) is searched."""
        before = len(self.text)
        if self.poll():
            line_start = self.text.rfind("\n", 0, before) + 1
            self.stage = stage_of(engine, self.text[line_start:], after=self.stage)
        return self.stage

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines, for a failure report: the engine is done, so a character it cut short is shown too."""
        self.poll()
        if self._pending:
            self.text += self._pending.decode(errors="replace")  # (already counted in offset)
            self._pending = b""
        return "\n".join(self.text.rstrip("\n").splitlines()[-lines:])


def _incomplete_utf8_tail(raw: bytes) -> int:
    """How many bytes at the end of `raw` begin a UTF-8 character that the next read completes."""
    for back in range(1, min(4, len(raw)) + 1):
        byte = raw[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the character starts here
            need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 1
            return back if need > back else 0
    return 0


def stage_of(engine: str, text: str, after: str | None = None) -> str | None:
    """The latest start-up stage `text` shows (the engine's STAGES are in the order it goes through them);
    `after`, a stage reached earlier, is kept unless the text shows a later one."""
    stages = module(engine).STAGES
    names = [stage for _, stage in stages]
    found = names.index(after) if after in names else -1
    for i, (pattern, _) in enumerate(stages):
        if i > found and log_pattern(pattern).search(text):
            found = i
    return names[found] if found >= 0 else None


def diagnose(engine: str, text: str) -> str | None:
    for pattern, kind in module(engine).DIAGNOSES:
        if log_pattern(pattern).search(text):
            return kind
    return None


def _failure(launch: Launch, log: LogReader, what: str, rc: int | None = None) -> EngineFailed:
    kind = diagnose(launch.candidate.engine, log.text + log.poll())
    if kind is None and rc is not None and rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        before, after = log.oom_kills_before, oom_kill_count()
        if -rc == signal.SIGKILL and before is not None and after is not None and after > before:
            kind = "oom"  # the kernel's OOM killer, counted in our cgroup during this attempt
        what += f" (killed by {sig})"
    detail = ""
    if kind == "oom":
        c = launch.candidate
        cap = launch.memory_limit_bytes
        capped = f", address space capped at {format_size(cap)}" if cap else ""
        detail = f" (planned {format_size(c.memory.total_bytes)} for {c.label()} at {c.context:,} tokens{capped})"
    return EngineFailed(_explain(what, kind, log, detail), kind)


def _explain(what: str, kind: str | None, log: LogReader, detail: str = "") -> str:
    """What happened, the diagnosis when the log matched a known pattern, and the log's last lines."""
    advice = ADVICE.get(kind or "", "") + detail
    return (
        f"{what}.{' Diagnosis: ' + advice + '.' if advice else ''}\n"
        f"--- last lines of {log.path} ---\n{log.tail()}\n--- end of log ---"
    )


def _memory_cgroup_files() -> list[Path]:
    """This process's cgroup files that count OOM kills: v2 memory.events, v1 memory.oom_control."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":
            files.append(Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            files.append(Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control")
    return files


def oom_kill_count() -> int | None:
    """OOM kills so far in the cgroup `up` and its engine share; None when the kernel does not say."""
    for file in _memory_cgroup_files():
        try:
            match = re.search(r"^oom_kill (\d+)$", file.read_text(), re.MULTILINE)
        except OSError:
            continue
        if match:
            return int(match.group(1))
    return None


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _child_setup(memory_limit: int | None, die_with_parent: bool) -> Callable[[], None]:
    """What the child does between fork and exec. Everything it needs is looked up here, in the parent:
    the child may not import or allocate (another thread of `up`, such as a download's progress monitor,
    could hold a lock at fork time)."""
    import ctypes
    import resource

    prctl = ctypes.CDLL(None, use_errno=True).prctl if die_with_parent else None
    parent = os.getpid()
    setrlimit, rlimit_as = resource.setrlimit, resource.RLIMIT_AS
    sigmask, setmask = signal.pthread_sigmask, signal.SIG_SETMASK

    def setup() -> None:
        sigmask(setmask, ())  # `up` blocks the stop signals around the spawn; the engine must not inherit that
        if memory_limit:
            setrlimit(rlimit_as, (memory_limit, memory_limit))
        if prctl is not None:
            prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the engine gets SIGTERM when `up` dies
            if os.getppid() != parent:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)

    return setup


def spawn(launch: Launch, log_file: Path, foreground: bool) -> subprocess.Popen:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        try:
            return subprocess.Popen(
                list(launch.argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=launch.env,
                start_new_session=True,
                close_fds=True,
                preexec_fn=_child_setup(launch.memory_limit_bytes, die_with_parent=foreground),  # noqa: PLW1509
            )
        except FileNotFoundError:
            hint = "pip install vllm (on a machine with an NVIDIA GPU)" if launch.candidate.engine == "vllm" else ""
            raise EngineFailed(
                f"cannot start the engine: {launch.argv[0]!r} was not found. {hint}".rstrip(), "not_installed"
            ) from None


class Progress:
    """A live line on stderr: '[ 12.3s] loading weights'. One line per stage when stderr is not a terminal."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet
        self.stage: str | None = None
        self.last_draw = 0.0

    def show(self, elapsed: float, stage: str) -> None:
        if self.quiet:
            return
        if self.tty:
            now = time.monotonic()
            if stage != self.stage or now - self.last_draw >= 0.5:
                self.stream.write(f"\r\033[K[{elapsed:6.1f}s] {stage}")
                self.stream.flush()
                self.last_draw = now
        elif stage != self.stage:
            self.stream.write(f"[{elapsed:6.1f}s] {stage}\n")
            self.stream.flush()
        self.stage = stage

    def done(self) -> None:
        if self.tty and not self.quiet and self.stage is not None:
            self.stream.write("\r\033[K")
            self.stream.flush()


class Readiness:
    """The readiness check shared by `up`, `wait` (systemd's ExecStartPost) and the benchmarks: the port
    answers, the engine's ready path answers, the model is listed, and a one-token chat completion returns."""

    def __init__(self, endpoint: Endpoint, ready_path: str, served_name: str | None):
        self.endpoint, self.ready_path, self.served_name = endpoint, ready_path, served_name
        self.listed = False
        self.pause = POLL_SECONDS  # until the next round: HTTP_RETRY_SECONDS after a failed HTTP check
        http_stack()  # import the HTTP client now, while the engine loads, not when its port opens

    def check(
        self, host: str, port: int, completion_timeout: float, on_completion: Callable[[], None] | None = None
    ) -> bool:
        """One round; True when ready. Raises EngineFailed when the server refuses the API key."""
        self.pause = POLL_SECONDS
        if not port_open(host, port, timeout=0.5):
            return False
        self.pause = HTTP_RETRY_SECONDS
        try:
            if not self.listed:
                self.endpoint.get(self.ready_path, timeout=5.0)
                ids = self.endpoint.model_ids()
                if self.served_name is None and ids:
                    self.served_name = ids[0]
                if self.served_name not in ids:
                    return False
                self.listed = True
            if on_completion:
                on_completion()
            self.endpoint.one_token(str(self.served_name), timeout=completion_timeout)
            return True
        except HTTPFailure as exc:
            if exc.status in (401, 403):
                raise EngineFailed(f"the server refused the API key: {exc}") from None
            return False
        except (KeyError, IndexError, TypeError, AttributeError):
            return False  # an answer without choices: not ready yet


def wait_ready(proc: subprocess.Popen, launch: Launch, log: LogReader, progress: Progress, started: float) -> float:
    """Poll until ready; returns the seconds it took. Checks, in order each round: the process (an exit is
    reported within one poll), the deadline, the log's stage, then the port and a real completion."""
    host = _connect_host(launch.host)
    endpoint = Endpoint(f"http://{host}:{launch.port}", launch.api_key)
    ready = Readiness(endpoint, module(launch.candidate.engine).READY_PATH, launch.served_name)
    deadline = started + launch.timeout_s
    while True:
        rc = proc.poll()
        if rc is not None:
            raise _failure(launch, log, f"the engine exited with code {rc} before it was ready", rc)
        now = time.monotonic()
        if now > deadline:
            raise _failure(launch, log, f"the engine was not ready after {launch.timeout_s:.0f} s (--timeout)")
        progress.show(now - started, log.poll_stage(launch.candidate.engine) or "starting")
        if ready.check(
            host,
            launch.port,
            completion_timeout=max(1.0, min(120.0, deadline - now)),
            on_completion=lambda: progress.show(time.monotonic() - started, "first completion"),
        ):
            return time.monotonic() - started
        time.sleep(ready.pause)


def wait_url(url: str, served_name: str | None, api_key: str | None, timeout_s: float, progress: Progress) -> float:
    """`qwen-deploy wait`: poll an endpoint (ours or not) until it serves; seconds it took, or EngineFailed."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise UsageError(f"--url must look like http://HOST:PORT, not {url!r}.")
    base = f"http://{parts.netloc}"
    ready = Readiness(Endpoint(base, api_key), "/v1/models", served_name)
    started = time.monotonic()
    while True:
        now = time.monotonic()
        if now - started > timeout_s:
            raise EngineFailed(f"{base} did not serve within {timeout_s:.0f} s (--timeout).")
        progress.show(now - started, "waiting for a completion" if port_open(parts.hostname, parts.port) else "waiting")
        if ready.check(
            parts.hostname, parts.port, completion_timeout=max(1.0, min(120.0, timeout_s - (now - started)))
        ):
            progress.done()
            return time.monotonic() - started
        time.sleep(ready.pause)


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


# ----------------------------------------------------------------------------- step down on OOM


def step_down(
    p: Plan, failed: Candidate, replan: Callable[[Request], Plan], fixed_weights: bool = False
) -> tuple[Plan, str] | None:
    """The plan to try after `failed` ran out of memory, and what changed: the first of a shorter context
    (half, while at least --min-context), a lower-precision KV cache, smaller weights, the CPU engine, for
    which the planner still finds a candidate that fits. With fixed_weights (the user's --model-file) only
    the context and the KV cache can change."""
    req = p.request
    pins = {"engine": failed.engine, "precision": failed.precision, "kv_cache_dtype": failed.kv_cache_dtype}
    steps: list[tuple[Request, str]] = []
    pad = 256 if failed.engine == "llamacpp" else 16
    shorter = (failed.context // 2) // pad * pad
    if shorter >= (req.min_context or 1):
        steps.append((replace(req, context=shorter, **pins), f"context {failed.context:,} -> {shorter:,} tokens"))
    order = module(failed.engine).KV_TYPES  # highest precision first
    if failed.kv_cache_dtype in order:
        for kv in order[order.index(failed.kv_cache_dtype) + 1 :]:
            kv_pins = {**pins, "kv_cache_dtype": kv}
            steps.append((replace(req, context=failed.context, **kv_pins), f"KV cache {failed.kv_cache_dtype} -> {kv}"))
    smaller = sorted(
        (a for a in p.model.artifacts if a.engine == failed.engine and a.weights_bytes < failed.artifact.weights_bytes),
        key=lambda a: -a.weights_bytes,
    )
    if fixed_weights:
        smaller = []
    for art in smaller:
        smaller_pins = {"engine": failed.engine, "precision": art.precision, "kv_cache_dtype": failed.kv_cache_dtype}
        steps.append(
            (replace(req, context=failed.context, **smaller_pins), f"weights {failed.precision} -> {art.precision}")
        )
    if failed.engine == "vllm" and not fixed_weights:
        cpu = replace(req, engine="llamacpp", precision=None, kv_cache_dtype=None)
        steps.append((cpu, "vLLM on the GPU -> llama.cpp on the CPU"))
    for request, why in steps:
        try:
            new = replan(request)
        except QwenDeployError:
            continue
        if new.choice is not None:
            return new, why
    return None


# ----------------------------------------------------------------------------- up


@dataclass(frozen=True)
class UpOptions:
    name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key_file: str | None = None
    detach: bool = False
    timeout_s: float | None = None
    memory_limit_bytes: int | None = None
    max_retries: int = 3
    fallback: bool = True
    model_file: str | None = None


def read_api_key(path: str) -> str:
    """The key from a file (one line). Never put into argv, logs or state records."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--api-key-file {path!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read --api-key-file {path!r}: {exc}.") from None
    key = text.strip()
    if not key or any(ch.isspace() for ch in key) or not key.isprintable():
        raise UsageError(f"--api-key-file {path!r} must hold one key: one line, no spaces or control characters.")
    return key


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _model_path(candidate: Candidate, model_file: str | None) -> str:
    from qwen_deploy.hardware import models_dir
    from qwen_deploy.modelfiles import fetch_gguf, fetch_snapshot

    if model_file:
        return str(Path(model_file).expanduser().resolve())
    if candidate.engine == "llamacpp":
        return str(fetch_gguf(candidate.artifact, models_dir()))
    return fetch_snapshot(candidate.artifact, models_dir())


def check_engine_installed(engine: str) -> None:
    """Say how to install the engine before downloading anything for it."""
    import importlib.util

    if engine == "llamacpp" and importlib.util.find_spec("llama_cpp") is None:
        raise QwenDeployError(
            "the llama.cpp engine (llama-cpp-python's server) is not installed in this environment. "
            "To fix: run scripts/install-llamacpp from the qwen-deploy sources (a portable build), "
            "or pip install 'qwen-deploy[llamacpp]'."
        )
    import shutil

    if engine == "vllm" and shutil.which("vllm") is None:
        raise QwenDeployError(
            "vLLM is not installed (no `vllm` command on PATH). To fix: pip install 'qwen-deploy[vllm]' on a "
            "machine with an NVIDIA GPU, or plan for the CPU with --engine llamacpp."
        )


def _prepare(p: Plan, candidate: Candidate, opts: UpOptions, name: str, api_key: str | None) -> Launch:
    check_engine_installed(candidate.engine)
    path = _model_path(candidate, opts.model_file)
    if candidate.engine == "llamacpp":
        from qwen_deploy.modelfiles import check_gguf

        # a plan made from this very file read its header a moment ago; any other file is read now
        same = Path(p.model.source).resolve() == Path(path).resolve() if p.model.source.endswith(".gguf") else False
        found = p.model if same else check_gguf(Path(path), p.model)
        if not found.chat_template:
            _say(f"warning: {path} has no chat template; the server falls back to its llama-2 chat format.")
    return Launch(
        name=name,
        candidate=with_args(candidate, path, opts.host, opts.port),
        env=module(candidate.engine).environment(dict(os.environ), api_key),
        host=opts.host,
        port=opts.port,
        served_name=candidate.served_name,
        model_id=p.model.id,
        api_key=api_key,
        api_key_file=str(Path(opts.api_key_file).expanduser().resolve()) if opts.api_key_file else None,
        memory_limit_bytes=opts.memory_limit_bytes,
        timeout_s=opts.timeout_s or default_timeout(candidate),
    )


def _claim(launch: Launch) -> None:
    """Refuse a second server with the same name or port (under the state lock; stale records are dropped)."""
    for stale in state.reap_stale():
        _say(f"note: removed the stale record of {stale.name!r} (pid {stale.pid} is gone).")
    for record in state.records():
        if record.name == launch.name:
            raise QwenDeployError(
                f"a server named {launch.name!r} is already running (pid {record.pid}, {record.url}). "
                f"To fix: `qwen-deploy down {launch.name}`, or pass another --name."
            )
        if record.port == launch.port:
            raise QwenDeployError(
                f"port {launch.port} is already used by {record.name!r} (pid {record.pid}). "
                "To fix: pass another --port (or --port auto), or stop it with `qwen-deploy down`."
            )
    check_port_free(launch.host, launch.port)


@dataclass
class _Running:
    """The engine `up` is responsible for right now (None before the spawn and once handed over)."""

    proc: subprocess.Popen | None = None
    record: state.Record | None = None


def _start(launch: Launch, attempt: int, foreground: bool, run: _Running) -> LogReader:
    """Claim the name and port, spawn the engine and write its record, all under the state lock. The stop
    signals are blocked meanwhile, so a Ctrl-C cannot fall between the spawn and `run` knowing the pid."""
    log_file = state.log_path(launch.name)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with state.locked():
        _claim(launch)
        with open(log_file, "a", encoding="utf-8") as handle:
            handle.write(
                f"=== qwen-deploy up {launch.name}: attempt {attempt}, {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join(launch.argv)}\n"
            )
            offset = handle.tell()
        oom_before = oom_kill_count()
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            run.proc = proc = spawn(launch, log_file, foreground)
            run.record = state.Record(
                name=launch.name,
                pid=proc.pid,
                start_ticks=process_start_ticks(proc.pid) or 0,
                engine=launch.candidate.engine,
                host=launch.host,
                port=launch.port,
                served_name=launch.served_name,
                model=launch.model_id,
                context=launch.candidate.context,
                log=str(log_file),
                plan=str(state.plan_path(launch.name)),
                command=list(launch.argv),
                started_at=time.time(),
                mode="foreground" if foreground else "detached",
                up_pid=os.getpid(),
                api_key_file=launch.api_key_file,
                attempt=attempt,
            )
            state.write(run.record)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a pending Ctrl-C is raised here
    return LogReader(log_file, offset, oom_before)


def _on_signal(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def _stopped_by_down(name: str, pid: int) -> bool:
    current = state.read(name)
    return current is None or current.pid != pid or current.state == "stopping"


def up(p: Plan, opts: UpOptions, replan: Callable[[Request], Plan], progress: Progress | None = None) -> int:
    """Run the plan's choice until ready (stepping down on OOM); then return (--detach) or supervise it.
    Returns the exit code."""
    import json

    assert p.choice is not None
    progress = progress or Progress()
    api_key = read_api_key(opts.api_key_file) if opts.api_key_file else None
    name = state.check_name(opts.name) if opts.name else state.default_name(p.choice.served_name)
    run = _Running()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _on_signal)
        attempt, candidate = 1, p.choice
        while True:
            launch = _prepare(p, candidate, opts, name, api_key)
            _say(f"starting {name}: {candidate.label()}, {candidate.context:,} tokens, log {state.log_path(name)}")
            started = time.monotonic()
            log = _start(launch, attempt, not opts.detach, run)
            assert run.proc is not None and run.record is not None
            try:
                took = wait_ready(run.proc, launch, log, progress, started)
                break
            except EngineFailed as failure:
                progress.done()
                pid = run.proc.pid
                stop_group(pid, proc=run.proc)
                by_down = _stopped_by_down(name, pid)
                state.remove_if(name, pid)
                run.proc = run.record = None
                if by_down:
                    _say(f"{name} was stopped while it started (qwen-deploy down).")
                    return 0
                if failure.kind != "oom" or not opts.fallback or attempt > opts.max_retries:
                    if failure.kind == "oom" and opts.fallback:
                        failure.args = (f"{failure.args[0]}\nGave up after {attempt} attempts (--max-retries).",)
                    raise
                nxt = step_down(p, candidate, replan, fixed_weights=bool(opts.model_file))
                if nxt is None:
                    raise EngineFailed(f"{failure}\nNo smaller candidate fits; nothing left to try.", "oom") from None
                p, why = nxt
                _say(f"out of memory with {candidate.label()} at {candidate.context:,} tokens; retrying with {why}.")
                candidate, attempt = p.choice, attempt + 1
                assert candidate is not None
        progress.done()
        ran = replace(p, choice=launch.candidate)
        from qwen_deploy.resources import write_atomic

        write_atomic(state.plan_path(name), json.dumps(ran.to_dict(), indent=2) + "\n", mode=0o600)
        with state.locked():
            if _stopped_by_down(name, run.proc.pid):
                raise Interrupted(signal.SIGTERM)
            run.record = state.update(run.record, state="ready", ready_at=time.time())
        summary = (
            f"{name} ready at {run.record.url}/v1 in {took:.1f} s: {launch.candidate.label()}, "
            f"{launch.candidate.context:,} tokens, model {launch.served_name!r}, pid {run.proc.pid}"
        )
        print(summary, flush=True)
        if opts.detach:
            run.proc = run.record = None  # it is the user's now: `qwen-deploy down` stops it
            return 0
        _say("Ctrl-C stops it.")
        return _supervise(run, log)
    except Interrupted as sig:
        _ignore_stop_signals()  # a second Ctrl-C must not interrupt the clean-up
        previous = {}  # nor kill `up` on its way out: it exits 128 + signal once the engine is stopped
        progress.done()
        was_ready = run.record is not None and run.record.state == "ready"
        if run.proc is not None:
            _say(f"{signal.Signals(sig.signum).name}: stopping {name} ...")
            how = stop_group(run.proc.pid, proc=run.proc)
            _say(f"{name} {how}.")
        return 0 if was_ready else 128 + sig.signum
    finally:
        _ignore_stop_signals()
        if run.proc is not None:  # any other error while it runs: leave nothing behind
            stop_group(run.proc.pid, proc=run.proc)
        if run.record is not None:
            state.remove_if(name, run.record.pid)
        for sig_num, handler in previous.items():
            signal.signal(sig_num, handler)


def _ignore_stop_signals() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _supervise(run: _Running, log: LogReader) -> int:
    """Wait for the engine in the foreground. A stop by `down` exits 0; a crash prints the log tail, exit 4."""
    assert run.proc is not None and run.record is not None
    record = run.record
    rc = run.proc.wait()
    if _stopped_by_down(record.name, record.pid):
        _say(f"{record.name} was stopped (qwen-deploy down).")
        return 0
    kind = diagnose(record.engine, log.text + log.poll())
    _say(_explain(f"{record.name} stopped on its own after it was ready (exit code {rc})", kind, log))
    return EXIT_ENGINE
