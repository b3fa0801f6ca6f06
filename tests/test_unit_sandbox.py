"""The CPU unit's sandbox does not stop the real llama.cpp server: its rendered ExecStart is started under the
restrictions the unit names, applied with the kernel's own mechanisms as systemd applies them (this machine
has no systemd as PID 1): SystemCallFilter=/SystemCallErrorNumber= and RestrictAddressFamilies= as a seccomp
filter built from `systemd-analyze syscall-filter`, MemoryDenyWriteExecute= as PR_SET_MDWE, ProtectProc=
and ProcSubset= as a private /proc mounted hidepid=invisible,subset=pid (tests/sandbox_exec.py). The same
sandbox is shown to bite first, so the test can fail."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_deploy.client import free_port
from qwen_deploy.readiness import Progress, wait_url
from qwen_deploy.render import RenderOptions, render
from tests.sandbox_exec import unit_settings

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare is not installed"),
]

PROBE = r"""
import ctypes, mmap, os, socket
libc = ctypes.CDLL(None, use_errno=True)
out = {}
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC); out["wx"] = 0
except OSError as e:
    out["wx"] = e.errno
try:
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW); out["packet"] = 0
except OSError as e:
    out["packet"] = e.errno
out["reboot"] = (libc.syscall(169, 0, 0, 0, 0), ctypes.get_errno())[1]  # x86-64 reboot, bad magic
out["cpuinfo"] = os.path.exists("/proc/cpuinfo")
out["pid1"] = os.path.exists("/proc/1/cmdline")
print(out)
"""


def _sandboxed(unit: Path, argv: list[str]) -> list[str]:
    """argv run in a user+mount+pid namespace whose /proc is what ProtectProc=/ProcSubset= give the unit."""
    s = unit_settings(unit.read_text())
    options = []
    if s.get("ProtectProc"):
        options.append(f"hidepid={s['ProtectProc'][-1]}")
    if s.get("ProcSubset"):
        options.append(f"subset={s['ProcSubset'][-1]}")
    mount = f"mount -t proc -o {','.join(options)} proc /proc && " if options else ""
    launcher = [sys.executable, "-m", "tests.sandbox_exec", str(unit), "--", *argv]
    return ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child",
            "sh", "-c", mount + 'exec "$@"', "sh", *launcher]  # fmt: skip


@pytest.fixture
def cpu_unit(tmp_path, small_gguf):
    from qwen_deploy import planner
    from qwen_deploy.model.gguf import spec_from_gguf
    from tests.conftest import make_hardware

    port = free_port()
    p = planner.plan(spec_from_gguf(small_gguf), make_hardware(ram_gib=8, cores=2), planner.Request(port=port))
    files, _ = render(p, "systemd", RenderOptions(name="sandboxed", port=port, model_path=str(small_gguf)))
    unit = tmp_path / "sandboxed.service"
    unit.write_text(files["sandboxed.service"])
    return unit, port


def _exec_start(unit: Path) -> list[str]:
    import shlex

    return shlex.split(unit_settings(unit.read_text())["ExecStart"][-1].replace("%%", "%"))


def test_the_sandbox_bites(cpu_unit):
    """Under the unit's restrictions: a writable+executable mapping fails (EACCES), a packet socket fails
    (EAFNOSUPPORT), reboot(2) fails (EPERM, not EINVAL), /proc has no cpuinfo and no other processes."""
    unit, _ = cpu_unit
    s = unit_settings(unit.read_text())
    assert s["MemoryDenyWriteExecute"] == ["yes"] and s["ProcSubset"] == ["pid"]
    out = subprocess.run(_sandboxed(unit, [sys.executable, "-c", PROBE]), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    got = eval(out.stdout)  # noqa: S307 (our own probe's dict)
    assert got == {"wx": 13, "packet": 97, "reboot": 1, "cpuinfo": False, "pid1": True}, got
    plain = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert eval(plain.stdout)["wx"] == 0  # noqa: S307 (the same probe is allowed without the sandbox)


def test_the_llama_cpp_server_starts_and_serves_inside_the_sandbox(cpu_unit):
    pytest.importorskip("llama_cpp")
    unit, port = cpu_unit
    argv = _exec_start(unit)
    assert argv[1:3] == ["-m", "llama_cpp.server"]
    proc = subprocess.Popen(
        _sandboxed(unit, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, text=True
    )
    try:
        took = wait_url(f"http://127.0.0.1:{port}", None, None, 120.0, Progress(quiet=True))
        assert took < 120 and proc.poll() is None
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert "Operation not permitted" not in out and "Bad system call" not in out, out[-2000:]
