"""A small HTTP client for OpenAI-compatible servers, on the standard library (urllib): the readiness check
runs in every `up` and `status`, and must not pay for importing an HTTP stack.

urllib.request (with http.client, email, ssl) takes ~12 ms to import, which would sit between `up`'s start
and the engine's; it is imported on first use instead, and `up` loads it while the engine starts
(`http_stack()` in the readiness check's constructor)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


def http_stack() -> Any:
    """urllib.request (which also holds urllib.error's HTTPError and URLError), imported on first use."""
    import urllib.request

    return urllib.request


class HTTPFailure(Exception):
    """The server could not be reached, or answered with an error status."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


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
        urllib_request = http_stack()
        data = json.dumps(body).encode() if body is not None else None
        req = urllib_request.Request(self.base + path, data=data, headers=self._headers(), method=method)
        try:
            with urllib_request.urlopen(req, timeout=timeout) as response:
                raw = response.read()
        except urllib_request.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise HTTPFailure(f"{method} {path} answered {exc.code}: {detail}", exc.code) from None
        except (urllib_request.URLError, ConnectionError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HTTPFailure(f"{method} {path}: {reason}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw.decode(errors="replace")

    def get(self, path: str, timeout: float = 10.0) -> Any:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any, timeout: float = 60.0) -> Any:
        return self.request("POST", path, body, timeout=timeout)

    def model_ids(self, timeout: float = 5.0) -> list[str]:
        data = self.get("/v1/models", timeout=timeout)
        items = data.get("data", []) if isinstance(data, dict) else []
        return [str(m.get("id")) for m in items if isinstance(m, dict)]

    def one_token(self, model: str, timeout: float = 60.0) -> str:
        """A one-token chat completion (the model's chat template is part of serving); a model without a
        chat template gets a plain completion. Returns the text it produced."""
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
        try:
            data = self.post("/v1/chat/completions", body, timeout=timeout)
            return str(data["choices"][0]["message"].get("content") or "")
        except HTTPFailure as exc:
            if exc.status != 400:
                raise
        data = self.post("/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 1}, timeout=timeout)
        return str(data["choices"][0].get("text") or "")


# Where a key may already be in the environment: ours, then the names the engines read (a systemd unit's
# EnvironmentFile= or a compose env_file gives the page and `wait` the same variables as the server).
API_KEY_ENV_NAMES = ("QWEN_DEPLOY_API_KEY", "VLLM_API_KEY", "API_KEY", "LLAMA_API_KEY")


def env_api_key(environ: dict[str, str] | None = None) -> str | None:
    import os

    env = os.environ if environ is None else environ
    return next((env[name] for name in API_KEY_ENV_NAMES if env.get(name)), None)


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
    except OSError:
        return False
