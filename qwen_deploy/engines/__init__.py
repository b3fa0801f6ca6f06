"""The engine registry: every engine qwen-deploy can plan for and run, by name, imported only when asked.

An engine is one package under qwen_deploy/engines/ that owns all it knows (see base.Engine). Nothing
outside this package tests an engine's name: the planner, launcher, renderer and CLI ask the engine object.
A new engine registers with `register(engine)` (a plugin, or a test's stand-in) or is listed in BUILTIN.
"""

from __future__ import annotations

import functools
import importlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwen_deploy.engines.base import Engine

# name -> (module holding ENGINE, label): the names are known without importing any engine
BUILTIN: dict[str, tuple[str, str]] = {
    "vllm": ("qwen_deploy.engines.vllm", "vLLM"),
    "llamacpp": ("qwen_deploy.engines.llamacpp", "llama.cpp"),
}
_registered: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    """Add an engine (or replace one of the same name); returns it."""
    _registered[engine.name] = engine
    return engine


def unregister(name: str) -> None:
    _registered.pop(name, None)


def names() -> list[str]:
    """Every engine's name, built-in first, in a fixed order."""
    return [*BUILTIN, *(n for n in _registered if n not in BUILTIN)]


def label(name: str) -> str:
    if name in _registered:
        return _registered[name].label
    return BUILTIN[name][1] if name in BUILTIN else name


def get(name: str) -> Engine:
    """The engine called `name` (its module is imported now, the first time)."""
    if name in _registered:
        return _registered[name]
    if name not in BUILTIN:
        from qwen_deploy.errors import UsageError

        raise UsageError(f"unknown engine {name!r}; choose one of: {', '.join(names())}.")
    return register(importlib.import_module(BUILTIN[name][0]).ENGINE)


def all_engines() -> list[Engine]:
    return [get(name) for name in names()]


@functools.cache
def log_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a log pattern on first use: planning never parses logs, so it never pays for them."""
    return re.compile(pattern)
