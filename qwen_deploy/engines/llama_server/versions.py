"""Which llama-server this is, and whether it takes the flags a plan uses: read from `llama-server --version`
(printed on stderr) and `--help`, never assumed. The memory rules are those of build b11312 (commit
0c1e57098, the llama.cpp llama-cpp-python 0.3.36 vendors); an older binary that lacks a flag the plan passes
is refused with a sentence naming the flag and the build found."""

from __future__ import annotations

import re

LLAMA_SERVER_BUILD = 11312
LLAMA_SERVER_COMMIT = "0c1e57098"

VERSION_RES = (
    re.compile(r"version: [\w.\-]+ \(build (\d+), commit (\w+)\)"),  # b7xxx+: "version: 0.5.0-dev (build N, commit C)"
    re.compile(r"version: (\d+) \((\w+)\)"),  # older: "version: 4589 (abc1234)"
)


def parse_version(text: str) -> tuple[int, str] | None:
    """(build number, commit) from `llama-server --version` (it writes to stderr)."""
    for pattern in VERSION_RES:
        m = pattern.search(text)
        if m:
            return int(m[1]), m[2]
    return None


# flag -> the value hint the plan relies on (None: the flag alone)
PLAN_FLAG_HINTS = {"--flash-attn": "[on|off|auto]", "--fit": "[on|off]"}


def missing_flags(help_text: str, argv: list[str]) -> list[str]:
    """Flags of `argv` that `llama-server --help` does not list (or lists without the value form the plan
    passes, e.g. a --flash-attn that was still a switch)."""
    known: dict[str, list[str]] = {}
    for line in help_text.splitlines():
        head = line.strip()
        if not head.startswith("-"):
            continue
        for name in re.findall(r"(?:^|[\s,])(--?[A-Za-z][\w-]*)", head):
            known.setdefault(name, []).append(head)
    missing = []
    for arg in argv:
        if not arg.startswith("--") or arg in missing:
            continue
        if arg not in known:
            missing.append(arg)
        elif arg in PLAN_FLAG_HINTS:
            form = re.compile(re.escape(arg) + r"\s+" + re.escape(PLAN_FLAG_HINTS[arg]))
            if not any(form.search(line) for line in known[arg]):
                missing.append(arg)
    return missing


def too_old_message(binary: str, version_text: str, help_text: str, argv: list[str]) -> str | None:
    """None when the binary takes every flag of argv, else one sentence naming the flag(s) and the version."""
    missing = missing_flags(help_text, argv)
    if not missing:
        return None
    found = parse_version(version_text)
    have = f"b{found[0]} ({found[1]})" if found else "of unknown version"
    names = ", ".join(missing)
    return (
        f"{binary} is llama-server {have}, which does not take {names} that the plan uses; "
        f"use a llama-server of b{LLAMA_SERVER_BUILD} or newer (scripts/install-llamacpp --server builds it)."
    )
