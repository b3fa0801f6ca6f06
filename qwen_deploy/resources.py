"""Files shipped with the package (profiles/, templates/), reading a user's files safely, and writing files
whole or not at all.

In a wheel the shipped folders live inside the package (qwen_deploy/profiles); in a source checkout or
editable install they are the repository's top-level folders. The profiles are YAML (commented, for people)
with a JSON copy, profiles/compiled.json, that `plan` reads instead (PyYAML costs ~8 ms to import;
scripts/compile-profiles writes the copy, and a test checks it matches the YAML).
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import Any

from qwen_deploy.errors import QwenDeployError, UsageError

_PACKAGE = Path(__file__).resolve().parent
MAX_INPUT_BYTES = 64 * 1024**2  # a hardware file, plan file, config.json or key file is far smaller


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


def compile_profiles() -> dict[str, Any]:
    """Every shipped profile parsed from its YAML: {"gpus": ..., "models": {name: ...}}."""
    root = profiles_dir()
    models = {p.stem: _yaml_load(p.read_text(encoding="utf-8")) for p in sorted((root / "models").glob("*.yaml"))}
    gpus = _yaml_load((root / "gpus.yaml").read_text(encoding="utf-8"))
    apple = _yaml_load((root / "apple.yaml").read_text(encoding="utf-8"))
    return {"gpus": gpus, "apple": apple, "models": models}


@functools.cache
def _profiles() -> dict[str, Any]:
    import json

    compiled = profiles_dir() / "compiled.json"
    try:
        return json.loads(compiled.read_text(encoding="utf-8"))
    except FileNotFoundError:  # a checkout whose JSON copy was not written yet
        return compile_profiles()


def load_profile_data(kind: str, name: str | None = None) -> Any:
    """A shipped profile: load_profile_data("gpus"), ("apple"), load_profile_data("models", "qwen3-4b-instruct-2507")
    (None when there is no such model), or load_profile_data("models") for all of them."""
    data = _profiles()[kind]
    return data if name is None else data.get(name)


def regular_file(path: str | os.PathLike[str], what: str, max_bytes: int | None = MAX_INPUT_BYTES) -> Path:
    """`path` when it is a regular file (not a FIFO, a device or a folder) of at most max_bytes; else a usage
    error naming it. Checked before opening: opening a FIFO would wait for a writer forever."""
    target = Path(path).expanduser()
    try:
        info = target.stat()
    except FileNotFoundError:
        raise UsageError(f"{what} {str(path)!r} does not exist.") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{what} {str(path)!r} is a folder, not a file.")
    if not stat.S_ISREG(info.st_mode):
        raise UsageError(f"{what} {str(path)!r} is not a regular file (a pipe, socket or device?).")
    if max_bytes is not None and info.st_size > max_bytes:
        raise UsageError(f"{what} {str(path)!r} is {info.st_size:,} bytes; a {what} is far smaller. Wrong file?")
    return target


def read_text(path: str | os.PathLike[str], what: str, max_bytes: int = MAX_INPUT_BYTES) -> str:
    """A user's text file, read whole (after the regular_file checks); errors name the file."""
    target = regular_file(path, what, max_bytes)
    try:
        with open(target, "rb") as handle:
            raw = handle.read(max_bytes + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {what} {str(path)!r}: {exc.strerror or exc}.") from None
    if len(raw) > max_bytes:  # it grew after the check
        raise UsageError(f"{what} {str(path)!r} is larger than {max_bytes:,} bytes.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{what} {str(path)!r} is not UTF-8 text.") from None


def load_yaml_file(path: str | os.PathLike[str], what: str) -> Any:
    """A user's YAML or JSON file; unreadable or malformed files are a usage error naming the file."""
    import yaml

    text = read_text(path, what)
    try:
        return _yaml_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise UsageError(f"{what} {str(path)!r} is not valid YAML{where}: {problem}.") from None
    except (RecursionError, ValueError, OverflowError) as exc:  # deeply nested or absurd scalars
        why = "a number in it has thousands of digits" if "digits" in str(exc) else f"{type(exc).__name__}"
        if isinstance(exc, RecursionError):
            why = "it is nested too deeply"
        raise UsageError(f"{what} {str(path)!r} cannot be read as YAML: {why}.") from None


def _write_error(target: Path, exc: OSError) -> QwenDeployError:
    return QwenDeployError(f"cannot write {target}: {exc.strerror or exc}. To fix: choose a writable folder.")


def write_atomic(path: str | os.PathLike[str], text: str, mode: int = 0o644) -> None:
    """Write `text` to a temp file beside `path`, then rename: readers never see half a file."""
    write_files_atomic({Path(path): text}, mode)


def write_files_atomic(files: dict[Path, str], mode: int = 0o644) -> None:
    """Write every file to a temp file beside its target first, then rename them all: a failure (a
    read-only folder, a full disk) leaves none of them half-written and no temp file behind."""
    import tempfile

    temps: list[tuple[str, Path]] = []
    try:
        for target, text in files.items():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
            except OSError as exc:
                raise _write_error(target, exc) from None
            temps.append((tmp, target))
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(text)
                os.chmod(tmp, mode)
            except OSError as exc:
                raise _write_error(target, exc) from None
        for tmp, target in temps:
            try:
                os.replace(tmp, target)
            except OSError as exc:
                raise _write_error(target, exc) from None
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
