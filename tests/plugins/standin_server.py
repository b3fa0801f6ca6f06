"""The stand-in engine's server: /health, /v1/models (the alias) and /v1/chat/completions (a fixed reply),
an API key from STANDIN_API_KEY, log lines on stderr like a real engine's. It reads the model file's first
bytes (a GGUF magic) so that a wrong path fails at start-up, as an engine's would."""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--alias", required=True)
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ctx", type=int, required=True)
    a = p.parse_args()
    print(f"standin: loading {a.model}", file=sys.stderr, flush=True)
    try:
        with open(a.model, "rb") as f:
            if f.read(4) != b"GGUF":
                raise OSError("not a GGUF file")
    except OSError as exc:
        print(f"standin: cannot read {a.model}: {exc}", file=sys.stderr, flush=True)
        sys.exit(1)
    key = os.environ.get("STANDIN_API_KEY")

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorized(self) -> bool:
            if key and self.headers.get("Authorization") != f"Bearer {key}":
                self._send(401, {"error": {"message": "invalid api key"}})
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models" and self._authorized():
                self._send(200, {"object": "list", "data": [{"id": a.alias, "object": "model"}]})
            elif self.path != "/v1/models":
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if self.path == "/v1/chat/completions" and self._authorized():
                self._send(200, {"object": "chat.completion", "model": a.alias, "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "stand-in"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})  # fmt: skip

        def log_message(self, fmt: str, *args) -> None:
            print("standin: " + fmt % args, file=sys.stderr, flush=True)

    server = ThreadingHTTPServer((a.host, a.port), Handler)
    print(f"standin: serving {a.alias} on {a.host}:{a.port} (context {a.ctx})", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
