"""Is it serving yet: the readiness check `up`, `wait` (systemd's ExecStartPost) and the benchmarks share, the
engine's log read as it grows (its start-up stage, what went wrong), and the live progress line.

Ready means: the port answers, the engine's ready path answers, the served model is listed on /v1/models,
and a one-token chat completion returns. Every loop here has a deadline.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from qwen_deploy.client import Endpoint, HTTPFailure, NotOpenAI, http_stack, parse_url, port_open
from qwen_deploy.engines import log_pattern
from qwen_deploy.errors import EngineFailed, UsageError

if TYPE_CHECKING:
    from qwen_deploy.engines.base import Engine

# How often `up`/`wait` look at the engine: while its port refuses connections a round (a refused connect,
# a waitpid, a read of the log's new bytes) costs ~0.1 ms, so every 25 ms keeps the check's own lag small next
# to an engine that starts in under a second. Once the port accepts and the HTTP check still fails (a server
# answering 503, or failing completions), rounds are 100 ms apart, not to flood it (or its log).
POLL_SECONDS = 0.025
HTTP_RETRY_SECONDS = 0.1
LOG_TAIL_LINES = 25
MAX_LOG_TEXT = 4 * 1024**2  # what a LogReader keeps of a log for diagnoses (the newest part)


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
                raw = self._pending + handle.read(MAX_LOG_TEXT)
        except OSError:
            return ""
        self.offset += len(raw) - len(self._pending)
        cut = _incomplete_utf8_tail(raw)
        self._pending = raw[len(raw) - cut :] if cut else b""
        new = raw[: len(raw) - cut].decode(errors="replace")
        self.text = (self.text + new)[-MAX_LOG_TEXT:]
        return new

    def poll_stage(self, engine: Engine) -> str | None:
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


def stage_of(engine: Engine, text: str, after: str | None = None) -> str | None:
    """The latest start-up stage `text` shows (the engine's stages are in the order it goes through them);
    `after`, a stage reached earlier, is kept unless the text shows a later one."""
    names = [stage for _, stage in engine.stages]
    found = names.index(after) if after in names else -1
    for i, (pattern, _) in enumerate(engine.stages):
        if i > found and log_pattern(pattern).search(text):
            found = i
    return names[found] if found >= 0 else None


def diagnose(engine: Engine, text: str) -> str | None:
    for pattern, kind in engine.diagnoses:
        if log_pattern(pattern).search(text):
            return kind
    return None


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
    """One readiness check: the port answers, the ready path answers, the model is listed, and a one-token
    chat completion returns."""

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
        except NotOpenAI:
            return False  # an answer without choices: not ready yet (or not a server that will be)


def wait_url(url: str, served_name: str | None, api_key: str | None, timeout_s: float, progress: Progress) -> float:
    """`qwen-deploy wait`: poll an endpoint (ours or not) until it serves; seconds it took, or EngineFailed."""
    from urllib.parse import urlsplit

    base = parse_url(url)
    parts = urlsplit(base)
    if not parts.port:
        raise UsageError(f"--url must name the port: http://HOST:PORT, not {url!r}.")
    ready = Readiness(Endpoint(base, api_key), "/v1/models", served_name)
    started = time.monotonic()
    while True:
        now = time.monotonic()
        if now - started > timeout_s:
            raise EngineFailed(f"{base} did not serve within {timeout_s:.0f} s (--timeout).")
        progress.show(now - started, "waiting for a completion" if port_open(parts.hostname, parts.port) else "waiting")
        if ready.check(
            str(parts.hostname), parts.port, completion_timeout=max(1.0, min(120.0, timeout_s - (now - started)))
        ):
            progress.done()
            return time.monotonic() - started
        time.sleep(ready.pause)
