"""A small HTTP client for OpenAI-compatible servers, on the standard library (urllib): the readiness check
runs in every `up` and `status`, and must not pay for importing an HTTP stack. Also what every command that
talks to a server shares: URLs, the address to connect to for a bind address, API keys from files or the
environment, and whether an address is loopback.

Safety: a redirect is never followed (an API key must not travel to another origin, and a server that
redirects its API is not the server asked for); every answer is read up to a size limit and within a
deadline; an answer that is not what an OpenAI-compatible server sends is an error that says so.

urllib.request (with http.client, email, ssl) takes ~12 ms to import, which would sit between `up`'s start
and the engine's; it is imported on first use instead, and `up` loads it while the engine starts
(`http_stack()` in the readiness check's constructor).
"""

from __future__ import annotations

import functools
import json
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

from qwen_deploy.errors import QwenDeployError, UsageError

MAX_ANSWER_BYTES = 16 * 1024**2  # far more than any API answer qwen-deploy asks for


def http_stack() -> Any:
    """urllib.request (which also holds urllib.error's HTTPError and URLError), imported on first use."""
    import urllib.request

    return urllib.request


@functools.cache
def _opener() -> Any:
    """An opener that follows no redirects (a 3xx is answered as an HTTPError with that status) and uses no
    proxy from the environment (http_proxy would otherwise see every request, API key included)."""
    urllib_request = http_stack()

    class NoRedirect(urllib_request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, PLR0913
            return None  # urllib then raises HTTPError(code) for the 3xx itself

    return urllib_request.build_opener(NoRedirect, urllib_request.ProxyHandler({}))


class HTTPFailure(Exception):
    """The server could not be reached, or answered with an error status."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class NotOpenAI(QwenDeployError):
    """The server answered, but not as an OpenAI-compatible server does."""


def _read_limited(response: Any, limit: int, deadline: float) -> bytes:
    """The answer's body, at most `limit` bytes, read before `deadline` (a server that drips bytes forever
    is cut off, not waited for)."""
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError("the answer took longer than the timeout")
        chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise HTTPFailure(f"the answer is larger than {limit:,} bytes")
        chunks.append(chunk)


@dataclass(frozen=True)
class Endpoint:
    base: str  # http://127.0.0.1:8000
    api_key: str | None = None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """The decoded JSON answer (or its text when it is not JSON); HTTPFailure when the server cannot be
        reached, answers an error status, redirects, or answers too much or too slowly."""
        import http.client

        urllib_request = http_stack()
        data = json.dumps(body).encode() if body is not None else None
        req = urllib_request.Request(self.base + path, data=data, headers=self._headers(), method=method)
        deadline = time.monotonic() + timeout
        try:
            with _opener().open(req, timeout=timeout) as response:
                raw = _read_limited(response, MAX_ANSWER_BYTES, deadline)
        except urllib_request.HTTPError as exc:
            if 300 <= exc.code < 400:
                where = exc.headers.get("Location", "elsewhere") if exc.headers else "elsewhere"
                raise HTTPFailure(
                    f"{method} {path} redirects ({exc.code}) to {str(where)[:200]}; qwen-deploy does not follow "
                    "redirects (the API key stays with the server it was meant for). Give the final URL.",
                    exc.code,
                ) from None
            try:
                detail = exc.read(300).decode(errors="replace")
            except (OSError, http.client.HTTPException):
                detail = ""
            raise HTTPFailure(f"{method} {path} answered {exc.code}: {detail}", exc.code) from None
        except (urllib_request.URLError, http.client.HTTPException, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            raise HTTPFailure(f"{method} {path}: {str(reason)[:300]}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            return raw.decode(errors="replace")

    def get(self, path: str, timeout: float = 10.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any, timeout: float = 60.0) -> Any:
        return self.request("POST", path, body, timeout=timeout)

    def post_json(self, path: str, body: Any, timeout: float = 60.0) -> dict[str, Any]:
        """Like post, but an answer that is not a JSON object is NotOpenAI (HTTP failures raise as usual)."""
        data = self.post(path, body, timeout=timeout)
        if not isinstance(data, dict):
            raise NotOpenAI(f"{self.base} is not an OpenAI-compatible server: {path} did not answer with JSON.")
        return data

    def model_ids(self, timeout: float = 5.0) -> list[str]:
        data = self.get("/v1/models", timeout=timeout)
        items = data.get("data", []) if isinstance(data, dict) else []
        return [str(m.get("id")) for m in items if isinstance(m, dict)] if isinstance(items, list) else []

    def one_token(self, model: str, timeout: float = 60.0) -> str:
        """A one-token chat completion (the model's chat template is part of serving); a model without a
        chat template gets a plain completion. Returns the text it produced; NotOpenAI when the answer has
        no choices."""
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
        try:
            return completion_text(self.post("/v1/chat/completions", body, timeout=timeout), chat=True)
        except HTTPFailure as exc:
            if exc.status != 400:
                raise
        data = self.post("/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 1}, timeout=timeout)
        return completion_text(data, chat=False)


def completion_text(data: Any, chat: bool) -> str:
    """The text of the first choice of a (chat) completion; NotOpenAI when the answer is not one."""
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") if chat else choice.get("text")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise NotOpenAI("the answer to a completion has no choices: not an OpenAI-compatible server.") from None
    return str(text or "")


# ----------------------------------------------------------------------------- URLs and addresses


def parse_url(url: str, what: str = "--url") -> str:
    """http(s)://HOST:PORT (a path is dropped) -> the base URL; anything else is a usage error."""
    from urllib.parse import urlsplit

    from qwen_deploy.values import show

    try:
        parts = urlsplit(str(url).strip())
        port = parts.port
    except ValueError:
        raise UsageError(f"{what} must look like http://HOST:PORT, not {show(url)}.") from None
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
        raise UsageError(f"{what} must look like http://HOST:PORT, not {show(url)}.")
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    return f"{parts.scheme}://{netloc}"


def connect_host(bind: str) -> str:
    """The address to connect to for a server bound to `bind` (all interfaces -> this machine's loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(bind, bind)


def url_for(bind: str, port: int) -> str:
    host = connect_host(bind)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost': a bind only this machine can reach."""
    import ipaddress

    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def describe_bind(host: str, port: int) -> str:
    """Where a server listens, in words: 'all interfaces, port 8000' or '127.0.0.1 port 8000'."""
    if host in ("0.0.0.0", "::", ""):
        return f"all interfaces{' (IPv6 and IPv4)' if host == '::' else ''}, port {port}"
    return f"{host} port {port}"


# ----------------------------------------------------------------------------- API keys

# Where a key may already be in the environment: ours, then the names the engines read (a systemd unit's
# EnvironmentFile= or a compose env_file gives the page and `wait` the same variables as the server).
API_KEY_ENV_NAMES = ("QWEN_DEPLOY_API_KEY", "VLLM_API_KEY", "API_KEY", "LLAMA_API_KEY")


def env_api_key(environ: dict[str, str] | None = None) -> str | None:
    import os

    env = os.environ if environ is None else environ
    return next((env[name] for name in API_KEY_ENV_NAMES if env.get(name)), None)


def read_api_key(path: str) -> str:
    """The key from a file (one line). Never put into argv, logs or state records."""
    from qwen_deploy.resources import read_text

    key = read_text(path, "--api-key-file", max_bytes=4096).strip()
    if not key or any(ch.isspace() for ch in key) or not key.isprintable():
        raise UsageError(f"--api-key-file {path!r} must hold one key: one line, no spaces or control characters.")
    return key


# ----------------------------------------------------------------------------- ports


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (the kernel's pick)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections on host:port (refused at once while a server is loading)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except (OSError, ValueError, OverflowError):
        return False
