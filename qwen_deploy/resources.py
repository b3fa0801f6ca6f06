"""Files shipped with the package (profiles/, templates/) and the one YAML reader with friendly errors.

In a wheel they live inside the package (qwen_deploy/profiles); in a source checkout or editable install
they are the repository's top-level folders.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from qwen_deploy.errors import UsageError

_PACKAGE = Path(__file__).resolve().parent


def _shipped(name: str) -> Path:
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


def profiles_dir() -> Path:
    return _shipped("profiles")


def templates_dir() -> Path:
    return _shipped("templates")


def _yaml_load(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def load_profile_yaml(relative: str) -> Any:
    """A shipped profile file, parsed (cached: profiles do not change while the process runs)."""
    return _yaml_load((profiles_dir() / relative).read_text(encoding="utf-8"))


def load_yaml_file(path: str | os.PathLike[str], what: str) -> Any:
    """A user's YAML or JSON file; unreadable or malformed files are a usage error naming the file."""
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {str(path)!r}: {exc}.") from None
    try:
        return _yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise UsageError(f"{what} {str(path)!r} is not valid YAML{where}: {problem}.") from None


def write_atomic(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Write `text` to a temp file beside `path`, then rename: readers never see half a file."""
    import tempfile

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
