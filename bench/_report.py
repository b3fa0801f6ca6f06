"""Write a benchmark's table into BENCHMARKS.md between markers, with the command that made it."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def update_section(name: str, command: str, body: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nProduced by the scripts in bench/; each section says how.\n"
    )
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    stamp = datetime.date.today().isoformat()
    section = f"{start}\n`{command}` — {stamp}, {machine()}\n\n{body.strip()}\n{end}"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + section + after
    else:
        text = text.rstrip("\n") + f"\n\n## {name}\n\n{section}\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def compile_package() -> None:
    """Write qwen_deploy's bytecode, as `pip install` does: a checkout run with PYTHONDONTWRITEBYTECODE=1
    would otherwise compile every changed module on every start, which is not what users run."""
    import compileall

    compileall.compile_dir(str(ROOT / "qwen_deploy"), quiet=1)
