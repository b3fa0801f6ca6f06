"""Where qwen-deploy keeps things on this machine: its state directory and the model cache it shares.

- state: $QWEN_DEPLOY_STATE_DIR, else $XDG_STATE_HOME/qwen-deploy, else ~/.local/state/qwen-deploy
  (records of what `up` started, the engines' logs, the plans they run, the chat page's project folders).
- cache: $QWEN_DEPLOY_CACHE_DIR, else $XDG_CACHE_HOME/qwen-deploy, else ~/.cache/qwen-deploy (what was
  measured on this machine: machine.json; the engines' builds: wheels/, bin/).
- models: the Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub, else $XDG_CACHE_HOME or ~/.cache
  /huggingface/hub), the same place vLLM, llama.cpp's -hf and other tools read.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    override = os.environ.get("QWEN_DEPLOY_STATE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "qwen-deploy"


def cache_dir() -> Path:
    override = os.environ.get("QWEN_DEPLOY_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "qwen-deploy"


def models_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


def ui_dir(name: str) -> Path:
    """The chat page's Chainlit project folder for one page (named after its server, or its port)."""
    return state_dir() / "ui" / name
