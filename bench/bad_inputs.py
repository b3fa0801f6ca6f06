"""Bad inputs tried, and what came back: every command given hostile values in every option (numbers at their
limits and past them, NaN, Unicode digits, control characters, shell and path tricks, malformed hosts, URLs
and names), files that are not what they claim (garbage JSON, truncated GGUF headers, FIFOs, devices,
folders) and state records planted in the state folder; decoy processes (own sessions, pids written into
records) must survive `status`, `down` and `down --all`, and nothing outside the state folder may change.

Each invocation is its own process (`python -m qwen_deploy ...`, a 60 s limit); counted: exit codes,
"internal error" (the catch-all's "hit a bug" line), Python tracebacks, exits that are not a documented code
(0-5, 128+N), and output promised as JSON that is not.

    python bench/bad_inputs.py [--no-write]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench._report import update_section  # noqa: E402

NUMBERS = ["", " ", "nan", "inf", "-inf", "-1", "0", "1e309", "9" * 5000, "٣", "³", "0x10", "1_000", "+3", "2.5.1"]
TEXTS = ["", "a\nb", "x\x1b[31m", "$(id)", "`id`", "../../etc/passwd", "-x", "--json", "%n%s", "a" * 5000, "é" * 300]
HOSTS = ["[", "]", "a:b", "..", "[::1]", "1.2.3", "999.1.1.1", "-x", "x-", "0.0.0.0 --api-key x", "", "a b"]
URLS = [
    "http://[::1",
    "http://127.0.0.1:abc",
    "ftp://x",
    "http://",
    "127.0.0.1:1",
    "http://127.0.0.1:1",
    "javascript:x",
]
NAMES = ["-x", "..", "/etc/passwd", "Bad", "a b", "", "a" * 64, "a\nb", "."]
SIZES = ["", "nan", "-1GiB", "1e400GiB", "12ZiB", "12 GiB GiB", "٣GiB", "0", "1PiB"]


def files(work: Path) -> dict[str, str]:
    """Hostile files: garbage, truncated, not regular, enormous numbers."""
    out = {}
    for name, text in {
        "garbage.json": "{not json",
        "list.json": "[1, 2, 3]",
        "nan.json": '{"schema": "qwen-deploy/hardware/v1", "cpu": {"physical_cores": NaN}}',
        "deep.json": "[" * 100_000 + "]" * 100_000,
        "plan.yaml": "choice: {engine: vllm, engine_args: {max_model_len: -5}}",
        "plan-bomb.yaml": "a: &a [1,2,3]\nb: &b [*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c]",
        "config.json": '{"num_hidden_layers": -3, "num_attention_heads": 0, "num_key_value_heads": "x"}',
    }.items():
        (work / name).write_text(text)
        out[name] = str(work / name)
    (work / "trunc.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 12)
    out["trunc.gguf"] = str(work / "trunc.gguf")
    hf = work / "hf"
    hf.mkdir()
    (hf / "config.json").write_text((work / "config.json").read_text())
    out["hf"] = str(hf)
    fifo = work / "fifo"
    os.mkfifo(fifo)
    out["fifo"] = str(fifo)
    out["/dev/zero"] = "/dev/zero"
    out["folder"] = str(work)
    out["missing"] = str(work / "missing.json")
    return out


def invocations(f: dict[str, str], port: int) -> list[list[str]]:
    runs: list[list[str]] = []
    plan = ["plan", "--json", "--no-gpu", "--ram", "16GiB"]
    for value in NUMBERS:
        for flag in ("--context", "--concurrency", "--cpus", "--gpu-memory-utilization", "--max-fill-time",
                     "--min-context", "--gpu-layers", "--tensor-parallel-size", "--data-parallel-size"):  # fmt: skip
            runs.append([*plan, flag, value])
        runs.append(["up", "--dry-run", "--port", value])
        runs.append(["bench", "--url", f"http://127.0.0.1:{port}", "--requests", value])
        runs.append(["verify", "--url", f"http://127.0.0.1:{port}", "--margin", value])
        runs.append(["logs", "-n", value])
    for value in SIZES:
        for flag in ("--ram", "--vram"):
            runs.append(["plan", "--json", flag, value])
        runs.append(["up", "--dry-run", "--memory-limit", value])
    for value in TEXTS:
        for flag in ("--engine", "--precision", "--kv-cache-dtype", "--prefer", "--model", "--gpu", "--vllm-version"):
            runs.append([*plan, flag, value])
        runs.append(["render", "compose", "--gpu", "RTX 4090", "--ram", "64GiB", "--model-file", value])
        runs.append(["ui", "--url", value, "--system-prompt", value, "--port", "0"])  # never a page that serves
    for value in HOSTS:
        runs.append(["up", "--dry-run", "--host", value])
        runs.append(["render", "systemd", "--gpu", "RTX 4090", "--ram", "64GiB", "--host", value])
        runs.append(["ui", "--url", f"http://127.0.0.1:{port}", "--host", value, "--port", "0"])
    for value in URLS:
        for command in ("bench", "verify", "wait"):
            runs.append([command, "--url", value, "--timeout", "2"])
    for value in NAMES:
        runs += [["down", value], ["logs", value], ["wait", "--name", value], ["bench", "--name", value],
                 ["verify", "--name", value], ["up", "--dry-run", "--name", value],
                 ["render", "compose", "--gpu", "L4", "--ram", "32GiB", "--name", value]]  # fmt: skip
    for path in f.values():
        runs += [["plan", "--json", "--hardware", path], ["plan", "--json", "--model", path],
                 ["render", "k8s", path], ["up", "--dry-run", path], ["up", "--dry-run", "--model-file", path],
                 ["bench", "--url", f"http://127.0.0.1:{port}", "--api-key-file", path],
                 ["render", "all", "--gpu", "L4", "--ram", "32GiB", "-o", path]]  # fmt: skip
    runs += [["status"], ["status", "--json"], ["down", "--all"], ["down"], ["logs"], ["nonsense"], ["plan", "--gpu"],
             ["plan", "--gpu", "2x2xL4"], ["plan", "--gpu", "Radeon RX 7900"], ["plan", "--gpu", "0xL4"],
             ["up", "--dry-run", "--host", "0.0.0.0"], ["render", "compose", "--host", "0.0.0.0"]]  # fmt: skip
    return runs


def plant_records(state: Path, decoys: list[int]) -> None:
    """State records a hostile (or merely broken) state folder holds: decoys' pids, pid 0/1, our own group,
    path tricks in names, garbage, a folder where a file belongs."""
    servers = state / "servers"
    servers.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    base = {"schema": "qwen-deploy/state/v2", "port": 8000, "host": "127.0.0.1", "state": "ready",
            "started_at": time.time(), "mode": "detached", "start_ticks": 1, "token": "t"}  # fmt: skip
    for i, pid in enumerate([*decoys, 0, 1, os.getpid(), os.getpgrp(), 2**22 + 5]):
        name = f"decoy{i}"
        (servers / f"{name}.json").write_text(json.dumps({**base, "name": name, "pid": pid}))
    (servers / "evil.json").write_text(json.dumps({**base, "name": "../../../outside", "pid": decoys[0]}))
    (servers / "garbage.json").write_text("{{{")
    (servers / "folder.json").mkdir()
    (servers / "huge.json").write_text(json.dumps({**base, "name": "huge", "pid": 10**30}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from qwen_deploy.client import free_port

    work = Path(tempfile.mkdtemp(prefix="qd-bad-"))
    state = work / "state"
    outside = work / "outside.json"
    outside.write_text("keep me")
    decoys = [subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(3)]
    plant_records(state, [d.pid for d in decoys])
    env = dict(os.environ, QWEN_DEPLOY_STATE_DIR=str(state), HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("QWEN_DEPLOY_API_KEY", None)
    port = free_port()  # nothing listens there
    runs = invocations(files(work), port)
    codes: collections.Counter[int] = collections.Counter()
    internal, tracebacks, undocumented, bad_json, timeouts = [], [], [], [], []
    started = time.monotonic()
    for argv in runs:
        try:
            done = subprocess.run([sys.executable, "-m", "qwen_deploy", *argv], env=env, capture_output=True,
                                  text=True, errors="replace", timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        except subprocess.TimeoutExpired:
            timeouts.append(argv)
            continue
        codes[done.returncode] += 1
        if "hit a bug" in done.stderr or "internal error" in done.stderr:
            internal.append((argv, done.stderr.strip().splitlines()[-1:]))
        if "Traceback (most recent call last)" in done.stderr + done.stdout:
            tracebacks.append(argv)
        if done.returncode not in (0, 1, 2, 3, 4, 5) and not 128 < done.returncode < 160:
            undocumented.append((argv, done.returncode))
        if "--json" in argv and done.returncode in (0, 3) and done.stdout.strip():
            try:
                json.loads(done.stdout)
            except ValueError:
                bad_json.append(argv)
    took = time.monotonic() - started
    alive = [d.poll() is None for d in decoys]
    for d in decoys:
        d.send_signal(signal.SIGKILL)
        d.wait()
    untouched = outside.read_text() == "keep me" and not (work.parent / "outside.json").exists()
    lines = [
        f"{len(runs):,} invocations of `python -m qwen_deploy` with bad inputs in {took:.0f} s, against a state folder "
        f"holding {len(decoys)} decoy processes' records and 9 broken ones.",
        "",
        "| outcome | count |",
        "|---|---:|",
        *(f"| exit {code} | {n:,} |" for code, n in sorted(codes.items())),
        f'| internal errors ("hit a bug") | **{len(internal)}** |',
        f"| Python tracebacks | **{len(tracebacks)}** |",
        f"| exit codes not documented | **{len(undocumented)}** |",
        f"| `--json` output that is not JSON | **{len(bad_json)}** |",
        f"| over 60 s (hung) | **{len(timeouts)}** |",
        f"| decoy processes signalled | **{alive.count(False)}** of {len(alive)} |",
        f"| files touched outside the state folder | **{0 if untouched else 1}** |",
    ]
    for title, items in (("internal", internal), ("traceback", tracebacks), ("undocumented", undocumented),
                         ("bad json", bad_json), ("timeout", timeouts)):  # fmt: skip
        for item in items[:10]:
            lines.append(f"\n{title}: `{item}`")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        update_section("bad_inputs", "python bench/bad_inputs.py", table)


if __name__ == "__main__":
    main()
