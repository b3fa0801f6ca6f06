"""The engine registry: every engine qwen-deploy can plan for and run, by name, imported only when asked.

An engine is one package under qwen_deploy/engines/ that owns all it knows (see base.Engine). Nothing
outside this package tests an engine's name: the planner, launcher, renderer and CLI ask the engine object.
A new engine is listed in BUILTIN, registers itself with `register(engine)`, or is a module named in the
environment variable QWEN_DEPLOY_ENGINE_MODULES (comma-separated importable names, each defining ENGINE),
imported the first time the registry is asked for its engines: a plugin outside this package.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qwen_deploy.engines.base import Engine

# name -> (module holding ENGINE, label, the option that names its version or None): known without importing
# any engine (the CLI builds --vllm-version from this table).
BUILTIN: dict[str, tuple[str, str, str | None]] = {
    "vllm": ("qwen_deploy.engines.vllm", "vLLM", "vllm-version"),
    "llamacpp": ("qwen_deploy.engines.llamacpp", "llama.cpp", None),
    "llama-server": ("qwen_deploy.engines.llama_server", "llama-server", None),
}
_registered: dict[str, Engine] = {}
PLUGINS_VAR = "QWEN_DEPLOY_ENGINE_MODULES"
_plugins_loaded: set[str] = set()


def _load_plugins() -> None:
    """Import the modules QWEN_DEPLOY_ENGINE_MODULES names (once each) and register their ENGINE."""
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_VAR, "").split(","))):
        if module in _plugins_loaded:
            continue
        _plugins_loaded.add(module)
        from qwen_deploy.errors import UsageError

        try:
            engine = importlib.import_module(module).ENGINE
        except ImportError as exc:
            raise UsageError(f"{PLUGINS_VAR} names {module!r}, which cannot be imported: {exc}.") from None
        except AttributeError:
            raise UsageError(f"{PLUGINS_VAR} names {module!r}, which defines no ENGINE.") from None
        if not getattr(engine, "name", "") or engine.name in BUILTIN:
            raise UsageError(f"{PLUGINS_VAR}: the engine in {module!r} needs a name of its own, not {engine.name!r}.")
        register(engine)


def register(engine: Engine) -> Engine:
    """Add an engine (or replace one of the same name); returns it."""
    _registered[engine.name] = engine
    return engine


def unregister(name: str) -> None:
    _registered.pop(name, None)


def names() -> list[str]:
    """Every engine's name, built-in first, in a fixed order."""
    _load_plugins()
    return [*BUILTIN, *(n for n in _registered if n not in BUILTIN)]


def label(name: str) -> str:
    if name in _registered:
        return _registered[name].label
    return BUILTIN[name][1] if name in BUILTIN else name


def version_flags() -> dict[str, str]:
    """engine name -> the option that names its version ('vllm-version'), for engines whose memory rules
    depend on their release."""
    _load_plugins()
    flags = {name: flag for name, (_, _, flag) in BUILTIN.items() if flag}
    flags.update({name: e.version_flag for name, e in _registered.items() if e.version_flag})
    return flags


def installed_version(name: str) -> str | None:
    """The version of an engine's package installed beside qwen-deploy, from its metadata folder
    (`PACKAGE-X.Y.Z.dist-info` on sys.path): no import of the engine, and faster than importlib.metadata."""
    import sys

    package = get(name).package
    if not package:
        return None
    prefix, suffix = package + "-", ".dist-info"
    for entry in sys.path:
        try:
            found = sorted(n for n in os.listdir(entry or ".") if n.startswith(prefix) and n.endswith(suffix))
        except OSError:
            continue
        for folder in found:
            version = folder[len(prefix) : -len(suffix)]
            if version[:1].isdigit():
                return version
    return None


def get(name: str) -> Engine:
    """The engine called `name` (its module is imported now, the first time)."""
    if name not in BUILTIN:
        _load_plugins()
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
