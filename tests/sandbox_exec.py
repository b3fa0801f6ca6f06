"""Run a command under the restrictions a systemd unit names, the way systemd applies them, for a machine
where systemd is not PID 1 (this one): `python -m tests.sandbox_exec UNIT -- ARGV...`.

What it reads from the unit and how it applies each (the kernel's own mechanisms, as systemd uses them):
- SystemCallFilter= / SystemCallErrorNumber=: a seccomp filter (libseccomp, through pyseccomp) allowing the
  system calls of the named groups, expanded by `systemd-analyze syscall-filter` (systemd's own tables),
  minus the ~ lists; a denied call fails with the unit's errno (systemd.exec(5)).
- RestrictAddressFamilies=: socket() with another family fails with EAFNOSUPPORT, as systemd's filter does.
- MemoryDenyWriteExecute=yes: prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), which systemd 255+ uses where
  the kernel has it (writable-and-executable mappings, and making writable memory executable, fail).
- NoNewPrivileges=yes: prctl(PR_SET_NO_NEW_PRIVS) (also what lets an unprivileged process load seccomp).
- ProtectProc=invisible and ProcSubset=pid are applied by the caller: a user+mount+pid namespace with /proc
  mounted `hidepid=invisible,subset=pid` (tests/test_unit_sandbox.py), as systemd mounts it for the unit.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket
import subprocess
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def unit_settings(text: str) -> dict[str, list[str]]:
    """Every `Key=value` of the unit's [Service] section, repeated keys kept in order."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _groups() -> dict[str, list[str]]:
    """systemd's system-call groups: name -> members (system calls and other groups)."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        if line.startswith("@"):
            current = line.split()[0]
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if name.startswith("@"):
            out |= expand(groups.get(name, []), groups)
        else:
            out.add(name)
    return out


def syscall_sets(settings: dict[str, list[str]]) -> tuple[set[str], set[str]]:
    """(allowed, denied) system calls from the unit's SystemCallFilter= lines (systemd.exec(5): the first
    allow list sets the default to deny; ~ lists remove)."""
    groups = _groups()
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in settings.get("SystemCallFilter", []):
        negative = value.startswith("~")
        names = value.lstrip("~").split()
        (denied if negative else allowed).update(expand(names, groups))
    return allowed - denied, denied


def apply(unit_text: str) -> None:
    import pyseccomp as seccomp

    libc = ctypes.CDLL(None, use_errno=True)
    s = unit_settings(unit_text)
    no_new_privs = s.get("NoNewPrivileges", ["no"])[-1] == "yes" or s.get("SystemCallFilter")
    if no_new_privs and libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    mdwe = s.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes"
    if mdwe and libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_MDWE (kernel 6.3+)")
    allowed, _ = syscall_sets(s) if s.get("SystemCallFilter") else (None, None)
    err = getattr(errno, s.get("SystemCallErrorNumber", ["EPERM"])[-1], errno.EPERM)
    families = s.get("RestrictAddressFamilies")
    if allowed is None and not families:
        return
    filt = seccomp.SyscallFilter(seccomp.ALLOW if allowed is None else seccomp.ERRNO(err))
    for name in sorted(allowed or ()):
        if families and name == "socket":
            continue  # decided by family below
        with contextlib.suppress(RuntimeError, ValueError, OSError):  # a call this architecture lacks
            filt.add_rule(seccomp.ALLOW, name)
    if families:
        keep = {getattr(socket, f) for f in families[-1].split()}
        # socket(family, ...): the unit's families pass, every other one fails with EAFNOSUPPORT
        for family in range(0, 46):
            action = seccomp.ALLOW if family in keep else seccomp.ERRNO(errno.EAFNOSUPPORT)
            filt.add_rule(action, "socket", seccomp.Arg(0, seccomp.EQ, family))
    filt.load()


def main() -> None:
    unit = sys.argv[1]
    sep = sys.argv.index("--")
    argv = sys.argv[sep + 1 :]
    with open(unit, encoding="utf-8") as handle:
        apply(handle.read())
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
