"""Start the real llama-cpp-python server with a plan's exact argv, wait until it answers, stop it.

Used by the engine tests and the benchmarks. The server runs in its own process group with its output in
a log file; stopping sends SIGTERM to the group, waits, then SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from qwen_deploy.client import free_port  # noqa: F401  (the tests' port picker)


def _get(url: str, timeout: float = 2.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _post(url: str, body: dict, timeout: float = 60.0) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def complete(self, prompt: str, max_tokens: int = 1, **extra) -> dict:
        return _post(f"{self.base}/v1/completions", {"prompt": prompt, "max_tokens": max_tokens, **extra})

    def count_tokens(self, text: str) -> int:
        return len(_post(f"{self.base}/extras/tokenize", {"input": text})["tokens"])

    def prompt_of(self, n_tokens: int, unit: str = "the quick brown fox jumps over the lazy dog ") -> str:
        """A prompt of about n_tokens tokens in this server's tokenizer (never more)."""
        text = unit * max(1, n_tokens)
        count = self.count_tokens(text)
        if count > n_tokens:
            text = text[: len(text) * n_tokens // count]
        return text

    def chat(self, content: str, max_tokens: int = 16, **extra) -> dict:
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, **extra}
        return _post(f"{self.base}/v1/chat/completions", body)


def wait_ready(proc: subprocess.Popen, port: int, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            _get(f"http://127.0.0.1:{port}/v1/models", timeout=1.0)
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
            time.sleep(0.2)
    raise TimeoutError(f"server not ready after {timeout:.0f}s:\n{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


@contextmanager
def running_server(argv: list[str], port: int, log: Path, timeout: float = 120.0):
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(proc, port, log, timeout)
        yield Server(proc, port, log)
    finally:
        stop(proc)
