"""Time to ready: `qwen-deploy up --detach` (plan, header check, launch, wait for a real chat completion)
against the same engine started by hand with the same argv and polled by the same code (target <= 1.05x);
and how fast a crash after ready is reported by a foreground `up` (target <= 1 s). Interleaved runs in
one process, medians, so machine noise lands on both sides alike.

    python bench/time_to_ready.py [--runs 7] [--model PATH.gguf]   (default: SmolLM2-135M from its PyPI package)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from bench._report import update_section  # noqa: E402


def raw_engine(model: Path, port: int, workdir: Path) -> float:
    """The plan's argv started by hand (Popen), polled by launch.wait_ready: seconds from spawn to ready."""
    from qwen_deploy import launch
    from qwen_deploy.engines import llamacpp
    from qwen_deploy.hardware import probe
    from qwen_deploy.model import spec_from_gguf
    from qwen_deploy.planner import Request, plan

    p = plan(spec_from_gguf(model), probe(), Request(port=port))
    cand = p.choice
    job = launch.Launch(
        name="raw", candidate=launch.with_args(cand, str(model), "127.0.0.1", port),
        env=llamacpp.environment(dict(os.environ), None), host="127.0.0.1",
        port=port, served_name=cand.engine_args["model_alias"], model_id=p.model.id, timeout_s=300,
    )  # fmt: skip
    log = workdir / "raw.log"
    log.write_text("")
    start = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(job.argv), stdout=out, stderr=subprocess.STDOUT, env=job.env, start_new_session=True
        )
    try:
        launch.wait_ready(proc, job, launch.LogReader(log, 0), launch.Progress(quiet=True), time.monotonic())
        return time.perf_counter() - start
    finally:
        from qwen_deploy.procs import stop_group

        stop_group(proc.pid, proc=proc)


def via_up(model: Path, port: int, env: dict[str, str]) -> float:
    py = sys.executable
    start = time.perf_counter()
    result = subprocess.run(
        [py, "-m", "qwen_deploy", "up", "--model-file", str(model), "--port", str(port), "--name", "bench", "--detach"],
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - start
    subprocess.run([py, "-m", "qwen_deploy", "down", "bench"], env=env, capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"up failed:\n{result.stderr}")
    return took


def crash_report_seconds(model: Path, port: int, env: dict[str, str]) -> float:
    """Foreground up; once ready, SIGKILL the engine; seconds until `up` has printed the log tail and exited."""
    py = sys.executable
    args = [py, "-m", "qwen_deploy", "up", "--model-file", str(model), "--port", str(port), "--name", "crash"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.1)[0] and "ready at" in proc.stdout.readline():
            break
    record = json.loads((Path(env["QWEN_DEPLOY_STATE_DIR"]) / "servers" / "crash.json").read_text())
    killed = time.perf_counter()
    os.kill(record["pid"], signal.SIGKILL)
    proc.communicate(timeout=60)
    took = time.perf_counter() - killed
    assert proc.returncode == 4, proc.returncode
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if args.model:
        model = args.model.resolve()
    else:
        from tests.real_models import SMOLLM2, fetch

        model = fetch(SMOLLM2)
    from qwen_deploy.client import free_port

    workdir = Path(tempfile.mkdtemp(prefix="qd-ttr-"))
    env = dict(os.environ, QWEN_DEPLOY_STATE_DIR=str(workdir / "state"), HF_HUB_OFFLINE="1")
    raw_engine(model, free_port(), workdir)  # warm the page cache and .pyc files for both sides
    raw, up = [], []
    for _ in range(args.runs):
        raw.append(raw_engine(model, free_port(), workdir))
        up.append(via_up(model, free_port(), env))
    crashes = [crash_report_seconds(model, free_port(), env) for _ in range(3)]
    ratio = statistics.median(up) / statistics.median(raw)
    lines = [
        f"Model: {model.name}; {args.runs} interleaved runs each; ready = a one-token chat completion answered.",
        "",
        "| start | median (s) | min (s) | max (s) |",
        "|---|---:|---:|---:|",
        f"| engine by hand (same argv, same polling) | {statistics.median(raw):.2f} | {min(raw):.2f} | {max(raw):.2f} |",
        f"| `qwen-deploy up --detach` | {statistics.median(up):.2f} | {min(up):.2f} | {max(up):.2f} |",
        "",
        f"up / by hand (medians): **{ratio:.3f}** (target <= 1.05): {'met' if ratio <= 1.05 else 'missed'}",
        f"crash after ready reported by a foreground `up` in {max(crashes):.2f} s at worst of 3 "
        f"(target <= 1 s): {'met' if max(crashes) <= 1 else 'missed'}",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        update_section("time_to_ready", "python bench/time_to_ready.py", table)


if __name__ == "__main__":
    main()
