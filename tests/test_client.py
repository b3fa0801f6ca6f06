"""The HTTP client and what every command that talks to a server shares: API keys from files and the
environment, URLs, loopback, no redirects, bounded answers from hostile servers."""

from __future__ import annotations

import pytest

from qwen_deploy.client import read_api_key
from qwen_deploy.errors import UsageError


@pytest.mark.parametrize("content", ["", "two words", "a\nb", "\x01bad"])
def test_bad_api_key_files(tmp_path, content):
    key = tmp_path / "key"
    key.write_text(content)
    with pytest.raises(UsageError):
        read_api_key(str(key))


def test_api_key_file_one_line(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-123\n")
    assert read_api_key(str(key)) == "sk-123"
    with pytest.raises(UsageError, match="does not exist"):
        read_api_key(str(tmp_path / "missing"))


def test_api_key_from_the_environment_in_the_engines_names():
    from qwen_deploy.client import env_api_key

    assert env_api_key({"API_KEY": "a"}) == "a"
    assert env_api_key({"VLLM_API_KEY": "v", "API_KEY": "a"}) == "v"
    assert env_api_key({"QWEN_DEPLOY_API_KEY": "q", "API_KEY": "a"}) == "q"
    assert env_api_key({"API_KEY": ""}) is None


# ----------------------------------------------------------------------------- hostile servers, redirects

import json  # noqa: E402
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

from qwen_deploy.client import Endpoint, HTTPFailure, free_port, is_loopback, parse_url  # noqa: E402
from tests.test_cli import run  # noqa: E402


class Server:
    """A real HTTP server on 127.0.0.1 answering with `handler(request) -> (status, headers, body)`; it records
    every request's path and Authorization header."""

    def __init__(self, answer):
        self.seen: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.seen.append((self.path, self.headers.get("Authorization")))
                status, headers, payload = answer(self.path, body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _any  # noqa: N815 (the stdlib's names)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _openai(path: str, body: bytes):
    """Just enough of an OpenAI-compatible server for wait, bench and verify."""
    if path == "/v1/models":
        return 200, {"Content-Type": "application/json"}, json.dumps({"data": [{"id": "m"}]}).encode()
    if path.endswith("tokenize") or path.endswith("/count"):
        text = json.loads(body or b"{}").get("prompt") or json.loads(body or b"{}").get("input") or ""
        return 200, {}, json.dumps({"count": max(1, len(text) // 4)}).encode()
    usage = {"prompt_tokens": 8, "completion_tokens": 1}
    return 200, {}, json.dumps({"choices": [{"message": {"content": "ok"}, "text": "ok"}], "usage": usage}).encode()


@pytest.fixture
def second_origin():
    server = Server(_openai)
    yield server
    server.close()


def test_the_key_never_travels_to_a_redirect_target(second_origin, tmp_path, monkeypatch):
    """A server that redirects every request to a second server: the second never sees the key, and `wait`
    does not call the redirecting server ready."""
    redirector = Server(lambda path, body: (302, {"Location": second_origin.url + path}, b""))
    key = tmp_path / "key"
    key.write_text("sk-secret\n")
    try:
        for args in (
            ["wait", "--url", redirector.url, "--timeout", "1.5", "--api-key-file", str(key)],
            ["bench", "--url", redirector.url, "--model", "m", "--concurrency", "1", "--requests", "1",
             "--api-key-file", str(key)],
            ["verify", "--url", redirector.url, "--model", "m", "--context", "128", "--api-key-file", str(key)],
        ):  # fmt: skip
            code, out, err = run(*args)
            assert code != 0 and "bug" not in err, (args, err)
        monkeypatch.setenv("QWEN_DEPLOY_API_KEY", "sk-secret")
        run("wait", "--url", redirector.url, "--timeout", "1")
    finally:
        redirector.close()
    assert redirector.seen, "the redirecting server was asked"
    assert all(auth != "Bearer sk-secret" for _, auth in second_origin.seen), second_origin.seen


def _raw_server(reply: bytes, delay: float = 0.0):
    """A TCP server on 127.0.0.1 that sends `reply` (not HTTP, perhaps) to each connection, then closes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                time.sleep(delay)
                try:
                    conn.recv(65536)
                    conn.sendall(reply)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}", lambda: (stop.set(), sock.close())


@pytest.mark.parametrize(
    "reply",
    [
        b"HELLO THIS IS NOT HTTP\r\n\r\n",  # BadStatusLine
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html><body>a router login page</body></html>",
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops!",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n[42]",
        b"",  # connection closed at once
    ],
)
def test_broken_servers_are_one_sentence(reply):
    url, stop = _raw_server(reply)
    try:
        for args in (
            ["verify", "--url", url, "--model", "m", "--context", "128"],
            ["bench", "--url", url, "--model", "m", "--concurrency", "1", "--requests", "1", "--timeout", "2"],
            ["bench", "--url", url, "--concurrency", "1", "--requests", "1", "--timeout", "2"],
            ["wait", "--url", url, "--timeout", "1"],
        ):
            code, out, err = run(*args)
            assert code in (1, 4) and "bug" not in err and "Traceback" not in err, (args, err)
    finally:
        stop()


def test_a_tokenizer_that_always_says_one_token_cannot_grow_the_prompt_without_bound():
    """The issue's reproducer: a constant token count made verify double its prompt to 2.4 GB."""

    def constant(path, body):
        if "tokenize" in path or path.endswith("/count"):
            return 200, {}, b'{"count": 3}'
        return _openai(path, body)

    server = Server(constant)
    try:
        started = time.monotonic()
        code, _, err = run("verify", "--url", server.url, "--model", "m", "--context", "4096")
        assert code == 1 and "do not grow with the text" in err
        assert time.monotonic() - started < 60
    finally:
        server.close()


def test_a_slow_answer_is_cut_off_at_the_timeout():
    url, stop = _raw_server(b"HTTP/1.1 200 OK\r\n\r\n", delay=5.0)
    try:
        started = time.monotonic()
        with pytest.raises(HTTPFailure):
            Endpoint(url).get("/v1/models", timeout=0.5)
        assert time.monotonic() - started < 4
    finally:
        stop()


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://127.0.0.1:abc", "ftp://x", "http://", "127.0.0.1:8000", "http://a b"]
)
def test_malformed_urls_are_usage_errors(url):
    from qwen_deploy.errors import UsageError

    with pytest.raises(UsageError, match="must look like"):
        parse_url(url)
    code, _, err = run("wait", "--url", url, "--timeout", "1")
    assert code == 2 and "must look like" in err


@pytest.mark.parametrize(
    "host,loopback",
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("localhost", True), ("0.0.0.0", False),
     ("::", False), ("10.0.0.1", False), ("example.org", False), ("[::1]", True)],
)  # fmt: skip
def test_loopback(host, loopback):
    assert is_loopback(host) is loopback
