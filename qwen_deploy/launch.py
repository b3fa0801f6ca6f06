"""Start the planned engine, wait until it has answered a real completion, supervise it, stop it cleanly,
and step down to the next candidate when it runs out of memory. Engine-agnostic: the candidate's engine says
what to run, how to tell it is ready and what its log means.

The engine runs in its own session (its own process group) with stdout and stderr appended to
`logs/NAME.log` in the state directory, and an instance token in its environment that `status`/`down` check
before signalling anything. Stopping sends SIGTERM to the whole group, waits, then SIGKILL.
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

from qwen_deploy import state
from qwen_deploy.candidates import Candidate, Plan, Request
from qwen_deploy.client import Endpoint, connect_host, describe_bind, read_api_key
from qwen_deploy.errors import EXIT_ENGINE, EngineFailed, Interrupted, QwenDeployError, UsageError
from qwen_deploy.procs import INSTANCE_ENV, cmdline, new_token, port_owner, process_start_ticks, stop_group
from qwen_deploy.readiness import LogReader, Progress, Readiness, diagnose
from qwen_deploy.units import format_size

ADVICE = {
    "oom": "the engine ran out of memory",
    "port": "the port is already in use: pick another with --port, or stop what holds it",
    "missing_file": "a file the engine needs is missing: check the model path",
    "corrupt": "the model file is corrupt or not a GGUF the engine can read: download it again",
    "not_installed": "the engine is not installed",
    "cpu_unsupported": "the engine build uses CPU instructions this CPU lacks: reinstall it for this CPU",
    "gpu_busy": "other processes hold GPU memory: stop them or lower --gpu-memory-utilization",
    "gpu_unsupported": "this GPU is not supported by the installed engine build (or by this precision)",
    "no_gpu": "the engine found no usable GPU",
}


# ----------------------------------------------------------------------------- what to run


@dataclass(frozen=True)
class Launch:
    name: str
    candidate: Candidate  # with the local model path and this run's host/port
    env: dict[str, str]
    token: str  # the instance token in env (procs.INSTANCE_ENV)
    served_name: str
    model_id: str
    api_key: str | None = None
    api_key_file: str | None = None
    memory_limit_bytes: int | None = None
    timeout_s: float = 600.0

    @property
    def argv(self) -> tuple[str, ...]:
        return self.candidate.command


def default_timeout(candidate: Candidate) -> float:
    return max(120.0, 3 * candidate.engine_impl.expected_load_seconds(candidate))


# ----------------------------------------------------------------------------- ports


def check_port_free(host: str, port: int) -> None:
    """Bind the port the way uvicorn does (SO_REUSEADDR) and let go: in use -> an error naming the holder."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except (OSError, OverflowError) as exc:
            code = getattr(exc, "errno", None)
            if code == errno.EADDRINUSE:
                owner = port_owner(port)
                held = f" by pid {owner} ({cmdline(owner)})" if owner else ""
                raise QwenDeployError(
                    f"port {port} on {host} is already in use{held}. "
                    "To fix: pass another --port (or --port auto), or stop what holds it."
                ) from None
            if code in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(exc, socket.gaierror):
                raise UsageError(f"--host {host} is not an address of this machine.") from None
            raise QwenDeployError(f"cannot bind {host}:{port}: {getattr(exc, 'strerror', None) or exc}.") from None


# ----------------------------------------------------------------------------- failures


def _failure(launch: Launch, log: LogReader, what: str, rc: int | None = None) -> EngineFailed:
    engine = launch.candidate.engine_impl
    kind = diagnose(engine, log.text + log.poll())
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
    elif kind == "not_installed":
        detail = f": {engine.install_hint}"
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
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
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


# ----------------------------------------------------------------------------- spawning

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


def spawn(launch: Launch, log_fd: int, foreground: bool) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            list(launch.argv),
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            env=launch.env,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_child_setup(launch.memory_limit_bytes, die_with_parent=foreground),  # noqa: PLW1509
        )
    except FileNotFoundError:
        engine = launch.candidate.engine_impl
        raise EngineFailed(
            f"cannot start the engine: {launch.argv[0]!r} was not found. To fix: {engine.install_hint}",
            "not_installed",
        ) from None


def wait_ready(proc: subprocess.Popen, launch: Launch, log: LogReader, progress: Progress, started: float) -> float:
    """Poll until ready; returns the seconds it took. Checks, in order each round: the process (an exit is
    reported within one poll), the deadline, the log's stage, then the port and a real completion."""
    c = launch.candidate
    engine = c.engine_impl
    host = connect_host(c.host)
    endpoint = Endpoint(f"http://[{host}]:{c.port}" if ":" in host else f"http://{host}:{c.port}", launch.api_key)
    ready = Readiness(endpoint, engine.ready_path, launch.served_name)
    deadline = started + launch.timeout_s
    while True:
        rc = proc.poll()
        if rc is not None:
            raise _failure(launch, log, f"the engine exited with code {rc} before it was ready", rc)
        now = time.monotonic()
        if now > deadline:
            raise _failure(launch, log, f"the engine was not ready after {launch.timeout_s:.0f} s (--timeout)")
        progress.show(now - started, log.poll_stage(engine) or "starting")
        if ready.check(
            host,
            c.port,
            completion_timeout=max(1.0, min(120.0, deadline - now)),
            on_completion=lambda: progress.show(time.monotonic() - started, "first completion"),
        ):
            return time.monotonic() - started
        time.sleep(ready.pause)


# ----------------------------------------------------------------------------- step down on OOM


def step_down(
    p: Plan, failed: Candidate, replan: Callable[[Request], Plan], fixed_weights: bool = False
) -> tuple[Plan, str] | None:
    """The plan to try after `failed` ran out of memory, and what changed: the first of a shorter context
    (half, while at least --min-context), a lower-precision KV cache, smaller weights, an engine on the CPU,
    for which the planner still finds a candidate that fits. With fixed_weights (the user's --model-file)
    only the context and the KV cache can change."""
    engine = failed.engine_impl
    req = p.request
    pins = {"engine": failed.engine, "precision": failed.precision, "kv_cache_dtype": failed.kv_cache_dtype}
    steps: list[tuple[Request, str]] = []
    pad = engine.context_step
    shorter = (failed.context // 2) // pad * pad
    if shorter >= (req.min_context or 1):
        steps.append((replace(req, context=shorter, **pins), f"context {failed.context:,} -> {shorter:,} tokens"))
    order = engine.kv_types  # highest precision first
    if failed.kv_cache_dtype in order:
        for kv in order[order.index(failed.kv_cache_dtype) + 1 :]:
            kv_pins = {**pins, "kv_cache_dtype": kv}
            steps.append((replace(req, context=failed.context, **kv_pins), f"KV cache {failed.kv_cache_dtype} -> {kv}"))
    smaller = [] if fixed_weights else sorted(
        (a for a in p.model.artifacts
         if a.format == failed.artifact.format and a.weights_bytes < failed.artifact.weights_bytes),
        key=lambda a: -a.weights_bytes,
    )  # fmt: skip
    for art in smaller:
        smaller_pins = {**pins, "precision": art.precision}
        steps.append(
            (replace(req, context=failed.context, **smaller_pins), f"weights {failed.precision} -> {art.precision}")
        )
    if failed.device == "gpu" and not fixed_weights:
        steps.append((replace(req, engine=None, precision=None, kv_cache_dtype=None), "the GPU -> the CPU"))
    for request, why in steps:
        try:
            new = replan(request)
        except QwenDeployError:
            continue
        if why == "the GPU -> the CPU":
            cpu = next((c for c in new.candidates if c.fits and c.device == "cpu"), None)
            new = replace(new, choice=cpu)
            why = f"{engine.label} on the GPU -> {cpu.engine_impl.label} on the CPU" if cpu else why
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


def _say(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def _prepare(p: Plan, candidate: Candidate, opts: UpOptions, name: str, api_key: str | None) -> Launch:
    from qwen_deploy import modelfiles
    from qwen_deploy.paths import models_dir

    engine = candidate.engine_impl
    engine.check_installed(candidate)
    if opts.model_file:
        path = str(Path(opts.model_file).expanduser().resolve())
    else:
        path = modelfiles.fetch(candidate.artifact, models_dir())
    found = modelfiles.check(candidate.artifact.format, Path(path), p.model)
    if found is not None and not found.chat_template:
        _say(f"warning: {path} has no chat template; the server falls back to its default chat format.")
    token = new_token()
    env = {**engine.environment(dict(os.environ), api_key), INSTANCE_ENV: token}
    return Launch(
        name=name,
        candidate=candidate.at(model_path=path, host=opts.host, port=opts.port),
        env=env,
        token=token,
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
    c = launch.candidate
    for record in state.records():
        if record.name == launch.name:
            raise QwenDeployError(
                f"a server named {launch.name!r} is already running (pid {record.pid}, {record.url}). "
                f"To fix: `qwen-deploy down {launch.name}`, or pass another --name."
            )
        if record.port == c.port:
            raise QwenDeployError(
                f"port {c.port} is already used by {record.name!r} (pid {record.pid}). "
                "To fix: pass another --port (or --port auto), or stop it with `qwen-deploy down`."
            )
    check_port_free(c.host, c.port)


@dataclass
class _Running:
    """The engine `up` is responsible for right now (None before the spawn and once handed over)."""

    proc: subprocess.Popen | None = None
    record: state.Record | None = None


def _start(launch: Launch, attempt: int, foreground: bool, run: _Running) -> LogReader:
    """Claim the name and port, spawn the engine and write its record, all under the state lock. The stop
    signals are blocked meanwhile, so a Ctrl-C cannot fall between the spawn and `run` knowing the pid."""
    c = launch.candidate
    with state.locked():
        _claim(launch)
        log_fd = state.open_log(launch.name)
        try:
            header = (
                f"=== qwen-deploy up {launch.name}: attempt {attempt}, {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{' '.join(launch.argv)}\n"
            )
            os.write(log_fd, header.encode())
            offset = os.lseek(log_fd, 0, os.SEEK_END)
            oom_before = oom_kill_count()
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                run.proc = proc = spawn(launch, log_fd, foreground)
                run.record = state.Record(
                    name=launch.name,
                    pid=proc.pid,
                    start_ticks=process_start_ticks(proc.pid) or 0,
                    token=launch.token,
                    engine=c.engine,
                    host=c.host,
                    port=c.port,
                    served_name=launch.served_name,
                    model=launch.model_id,
                    context=c.context,
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
        finally:
            os.close(log_fd)
    return LogReader(state.log_path(launch.name), offset, oom_before)


_SIGNALLED: list[int] = []  # the stop signals `up` received, in order


def _on_signal(signum: int, _frame: object) -> None:
    _SIGNALLED.append(signum)
    raise Interrupted(signum)


def _interruption(exc: BaseException) -> int | None:
    """The stop signal behind `exc`: an Interrupted, one in its context chain, or the error CPython puts in the
    place of the handler's exception when it lands inside an import's error path ("TypeError: expected a
    message argument", from PyErr_SetImportError given no message) after a stop signal arrived. Any other
    error is itself, even after a Ctrl-C."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, Interrupted):
            return link.signum
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    if _SIGNALLED and isinstance(exc, TypeError) and str(exc) == "expected a message argument":
        return _SIGNALLED[-1]
    return None


def _stopped_by_down(name: str, pid: int) -> bool:
    current = state.read(name)
    return current is None or current.pid != pid or current.state == "stopping"


def up(p: Plan, opts: UpOptions, replan: Callable[[Request], Plan], progress: Progress | None = None) -> int:
    """Run the plan's choice until ready (stepping down on OOM); then return (--detach) or supervise it.
    Returns the exit code."""
    assert p.choice is not None
    progress = progress or Progress()
    api_key = read_api_key(opts.api_key_file) if opts.api_key_file else None
    name = state.check_name(opts.name) if opts.name else state.default_name(p.choice.served_name)
    run = _Running()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    _SIGNALLED.clear()
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
        state.write_plan(name, replace(p, choice=launch.candidate).to_dict())
        with state.locked():
            if _stopped_by_down(name, run.proc.pid):
                raise Interrupted(signal.SIGTERM)
            run.record = state.update(run.record, state="ready", ready_at=time.time())
        c = launch.candidate
        summary = (
            f"{name} ready at {run.record.url}/v1 in {took:.1f} s (listening on {describe_bind(c.host, c.port)}): "
            f"{c.label()}, {c.context:,} tokens, model {launch.served_name!r}, pid {run.proc.pid}"
        )
        print(summary, flush=True)
        if opts.detach:
            run.proc = run.record = None  # it is the user's now: `qwen-deploy down` stops it
            return 0
        _say("Ctrl-C stops it.")
        return _supervise(run, log, c.engine_impl)
    except BaseException as exc:
        signum = _interruption(exc)
        if signum is None:
            raise
        _ignore_stop_signals()  # a second Ctrl-C must not interrupt the clean-up
        previous = {}  # nor kill `up` on its way out: it exits 128 + signal once the engine is stopped
        progress.done()
        was_ready = run.record is not None and run.record.state == "ready"
        if run.proc is not None:
            _say(f"{signal.Signals(signum).name}: stopping {name} ...")
            how = stop_group(run.proc.pid, proc=run.proc)
            _say(f"{name} {how}.")
        return 0 if was_ready else 128 + signum
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


def _supervise(run: _Running, log: LogReader, engine) -> int:  # noqa: ANN001 (engines.base.Engine)
    """Wait for the engine in the foreground. A stop by `down` exits 0; a crash prints the log tail, exit 4."""
    assert run.proc is not None and run.record is not None
    record = run.record
    rc = run.proc.wait()
    if _stopped_by_down(record.name, record.pid):
        _say(f"{record.name} was stopped (qwen-deploy down).")
        return 0
    kind = diagnose(engine, log.text + log.poll())
    _say(_explain(f"{record.name} stopped on its own after it was ready (exit code {rc})", kind, log))
    return EXIT_ENGINE
