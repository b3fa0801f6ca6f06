"""`qwen-deploy ui`: the Chainlit chat page over a deployed endpoint (the app is qwen_deploy/ui_app.py).

This module holds what needs no Chainlit: the settings file the app reads, the history trimming that keeps a
conversation inside the plan's context, JSON-answer checking, and the files of the Chainlit project folder
(config.toml with telemetry-free defaults, the header script). `ui` writes them into the state directory and
runs `python -m chainlit run ui_app.py --headless` there.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qwen_deploy.errors import UsageError

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer clearly and concisely."
JSON_SYSTEM_PROMPT = (
    "Answer only with one JSON object, no prose and no code fences. Use keys that describe the content."
)
CONFIG_ENV = "QWEN_DEPLOY_UI_CONFIG"


@dataclass(frozen=True)
class UISettings:
    url: str  # http://127.0.0.1:8000 (no /v1)
    model: str
    engine: str | None
    context: int | None
    api_key_file: str | None
    system_prompt: str
    max_tokens: int
    json_mode: bool
    title: str
    temperature: float = 0.7

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def load(cls, path: str | Path) -> UISettings:
        return cls(**json.loads(Path(path).read_text()))


def estimate_tokens(text: str) -> int:
    """A conservative token count when the server has no tokenizer endpoint: ~3 characters a token (English
    BPE averages about 4), plus the chat template's few tokens per message."""
    return math.ceil(len(text) / 3) + 4


def trim_history(
    system: str, turns: list[dict[str, str]], count: Callable[[str], int], budget: int
) -> tuple[list[dict[str, str]], int]:
    """The newest turns that fit `budget` tokens together with the system prompt, and how many of the oldest
    were dropped. The last turn (the user's new message) is always kept."""
    used = count(system)
    kept: list[dict[str, str]] = []
    for turn in reversed(turns):
        cost = count(turn["content"])
        if kept and used + cost > budget:
            break
        kept.append(turn)
        used += cost
    kept.reverse()
    # never start with an assistant turn: the template expects user first
    while len(kept) > 1 and kept[0]["role"] != "user":
        kept.pop(0)
    return kept, len(turns) - len(kept)


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def parse_json_answer(text: str) -> tuple[Any | None, str | None]:
    """(value, None) when the answer is JSON (a code fence around it is tolerated), else (None, why)."""
    candidate = text.strip()
    match = _FENCE.match(candidate)
    if match:
        candidate = match.group(1)
    try:
        return json.loads(candidate), None
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at line {exc.lineno}, column {exc.colno}"


def system_prompt_arg(value: str | None, json_mode: bool) -> str:
    """--system-prompt TEXT or @FILE; JSON mode appends the JSON instruction (the article's technique)."""
    if value and value.startswith("@"):
        try:
            value = Path(value[1:]).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the system prompt file {value[1:]!r}: {exc}.") from None
    prompt = value or DEFAULT_SYSTEM_PROMPT
    return f"{prompt}\n{JSON_SYSTEM_PROMPT}" if json_mode else prompt


def header_text(settings: UISettings) -> str:
    parts = [settings.model]
    if settings.engine:
        from qwen_deploy import engines

        parts.append(engines.label(settings.engine))
    if settings.context:
        parts.append(f"{settings.context:,}-token context")
    if settings.json_mode:
        parts.append("JSON answers")
    return " · ".join(parts)


CHAINLIT_CONFIG = """[project]
user_env = []
session_timeout = 3600
cache = false
allow_origins = ["http://{host}:{port}", "http://127.0.0.1:{port}", "http://localhost:{port}"]

[features]
unsafe_allow_html = false
latex = false
edit_message = false

[features.spontaneous_file_upload]
    enabled = false

[features.audio]
    enabled = false

[UI]
name = {name}
description = {description}
custom_js = "/public/qwen-deploy-header.js"

[meta]
generated_by = "{version}"  # Chainlit refuses a config whose generator is older than 0.3.0
"""

HEADER_JS = """// qwen-deploy: the model, engine and context at the top of the page.
(function () {
  const text = %s;
  function place() {
    if (document.getElementById("qwen-deploy-header")) return;
    const bar = document.createElement("div");
    bar.id = "qwen-deploy-header";
    bar.textContent = text;
    bar.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:1000;text-align:center;" +
      "font:600 13px system-ui,sans-serif;padding:4px;background:#1f6feb;color:#fff";
    document.body.appendChild(bar);
    document.body.style.paddingTop = "26px";
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", place);
  else place();
})();
"""


def write_project(folder: Path, settings: UISettings, host: str, port: int) -> Path:
    """The Chainlit project folder: settings, .chainlit/config.toml, public/ header script. Returns the app."""
    from importlib.metadata import version

    from qwen_deploy.resources import write_atomic
    from qwen_deploy.state import ensure_dir

    ensure_dir(folder)

    header = header_text(settings)
    write_atomic(folder / "settings.json", settings.to_json() + "\n", mode=0o600)
    toml_text = CHAINLIT_CONFIG.format(
        host=host,
        port=port,
        name=json.dumps(settings.title),
        description=json.dumps(header),
        version=version("chainlit"),
    )
    write_atomic(folder / ".chainlit" / "config.toml", toml_text)
    write_atomic(folder / "public" / "qwen-deploy-header.js", HEADER_JS % json.dumps(header))
    return Path(__file__).with_name("ui_app.py")


def chainlit_command(app: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "chainlit", "run", str(app), "--headless", "--host", host, "--port", str(port)]


def serve_page(settings: UISettings, host: str, port: int, folder: Path) -> None:
    """Run the Chainlit page in its own process group until Ctrl-C/TERM/HUP (or it exits), then stop it."""
    import os
    import signal
    import subprocess
    import time

    from qwen_deploy.client import connect_host, port_open, url_for
    from qwen_deploy.errors import QwenDeployError
    from qwen_deploy.launch import check_port_free
    from qwen_deploy.procs import stop_group

    app = write_project(folder, settings, host, port)
    check_port_free(host, port)
    env = dict(os.environ, CHAINLIT_APP_ROOT=str(folder), **{CONFIG_ENV: str(folder / "settings.json")})
    log = folder / "chainlit.log"
    with open(log, "ab") as out:
        os.chmod(log, 0o600)
        proc = subprocess.Popen(
            chainlit_command(app, host, port), cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    stops = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in stops:
        signal.signal(sig, stop)
    try:
        deadline = time.monotonic() + 120
        while not port_open(connect_host(host), port):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise QwenDeployError(f"the chat page did not start (log {log}):\n{tail}")
            time.sleep(0.1)
        sys.stderr.write(f"chat page for {header_text(settings)} at {url_for(host, port)} (Ctrl-C stops it)\n")
        print(url_for(host, port), flush=True)
        code = proc.wait()
        if code:
            raise QwenDeployError(f"the chat page stopped with exit code {code} (log {log}).")
    except KeyboardInterrupt:
        pass
    finally:
        for sig in stops:
            signal.signal(sig, signal.SIG_IGN)
        stop_group(proc.pid, proc=proc)
