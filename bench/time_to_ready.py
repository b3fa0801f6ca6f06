"""Time to ready: `qwen-deploy up --detach` (plan, header check, launch, wait for a real chat completion)
against the same engine started by hand with the same argv and polled by the same code (target <= 1.05x);
and how fast a crash after ready is reported by a foreground `up` (target <= 1 s). Interleaved runs in
one process, medians, so machine noise lands on both sides alike.

    python bench/time_to_ready.py [--runs 7] [--models smollm2,qwen3-4b-shape|PATH.gguf,...] [--context N]
                                  [--engine llamacpp|llama-server]

The target is judged on a model of the size this tool is for (Qwen3-4B: a synthetic GGUF with all its
dimensions, since the real one cannot be downloaded here); the 135M model shows `up`'s fixed cost
(Python start-up, imports, planning, the header read) against an engine that is ready in under a second.
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

from bench._report import compile_package, update_section  # noqa: E402
from tests.synthetic_gguf import full_size_qwen3_4b  # noqa: E402


def raw_engine(model: Path, port: int, workdir: Path, context: int | None = None, engine: str = "llamacpp") -> float:
    """The plan's argv started by hand (Popen), polled by launch.wait_ready: seconds from spawn to ready."""
    from qwen_deploy import engines, launch
    from qwen_deploy.hardware.probe import probe
    from qwen_deploy.model.gguf import spec_from_gguf
    from qwen_deploy.planner import Request, plan
    from qwen_deploy.readiness import LogReader, Progress

    p = plan(spec_from_gguf(model), probe(), Request(port=port, context=context or "auto", engine=engine))
    cand = p.choice
    job = launch.Launch(
        name="raw", candidate=cand.at(model_path=str(model), host="127.0.0.1", port=port),
        env=engines.get(cand.engine).environment(dict(os.environ), None), token="",
        served_name=cand.served_name, model_id=p.model.id, timeout_s=300,
    )  # fmt: skip
    log = workdir / "raw.log"
    log.write_text("")
    start = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            list(job.argv), stdout=out, stderr=subprocess.STDOUT, env=job.env, start_new_session=True
        )
    try:
        launch.wait_ready(proc, job, LogReader(log, 0), Progress(quiet=True), time.monotonic())
        return time.perf_counter() - start
    finally:
        from qwen_deploy.procs import stop_group

        stop_group(proc.pid, proc=proc)


def via_up(model: Path, port: int, env: dict[str, str], context: int | None = None, engine: str = "llamacpp") -> float:
    py = sys.executable
    args = ["up", "--model-file", str(model), "--port", str(port), "--name", "bench", "--detach", "--engine", engine]
    args += ["--context", str(context)] if context else []
    start = time.perf_counter()
    result = subprocess.run(
        [py, "-m", "qwen_deploy", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.perf_counter() - start
    subprocess.run([py, "-m", "qwen_deploy", "down", "bench"], env=env, capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"up failed:\n{result.stderr}")
    return took


def crash_report_seconds(
    model: Path, port: int, env: dict[str, str], context: int | None = None, engine: str = "llamacpp"
) -> float:
    """Foreground up; once ready, SIGKILL the engine; seconds until `up` has printed the log tail and exited.
    The kernel frees the engine's memory before waitpid returns: ~0.5 s for a 17 GiB KV cache."""
    py = sys.executable
    args = [py, "-m", "qwen_deploy", "up", "--model-file", str(model), "--port", str(port), "--name", "crash",
            "--engine", engine]  # fmt: skip
    args += ["--context", str(context)] if context else []
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


def _smollm2() -> Path:
    from tests.real_models import SMOLLM2, fetch

    return fetch(SMOLLM2)


MODELS = {
    "qwen3-4b-shape": ("Qwen3-4B-shaped (synthetic, all real dimensions, Q8_0, 4.3 GB)", full_size_qwen3_4b),
    "smollm2": ("SmolLM2-135M-Instruct Q4_1 (real, 0.1 GB)", _smollm2),
}


def resolve(name: str) -> tuple[str, Path]:
    if name in MODELS:
        label, get = MODELS[name]
        return label, get()
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise SystemExit(f"--models: {name!r} is neither {' nor '.join(MODELS)} nor a GGUF file")
    return path.name, path


def measure(
    model: Path, runs: int, workdir: Path, env: dict[str, str], context: int | None, engine: str = "llamacpp"
) -> tuple[list[float], list[float]]:
    from qwen_deploy.client import free_port

    raw_engine(model, free_port(), workdir, context, engine)  # warm the page cache for both sides
    raw, up = [], []
    for _ in range(runs):
        raw.append(raw_engine(model, free_port(), workdir, context, engine))
        up.append(via_up(model, free_port(), env, context, engine))
    return raw, up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--models",
        default="smollm2,qwen3-4b-shape",
        help="comma-separated, run in this order: smollm2, qwen3-4b-shape (the target), or GGUF paths; the last "
        "one is judged (small models first: a big one's KV cache evicts the page cache their starts depend on)",
    )
    parser.add_argument(
        "--context", type=int, help="the context to ask for (default: the plan's, the longest that fits)"
    )
    parser.add_argument("--engine", default="llamacpp", choices=["llamacpp", "llama-server"])
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    models = [resolve(name) for name in args.models.split(",") if name]
    compile_package()
    from qwen_deploy.client import free_port

    workdir = Path(tempfile.mkdtemp(prefix="qd-ttr-"))
    env = dict(os.environ, QWEN_DEPLOY_STATE_DIR=str(workdir / "state"), HF_HUB_OFFLINE="1")
    lines = [
        f"{args.runs} interleaved runs per model, engine {args.engine}; ready = a one-token chat completion answered; "
        f"context: {args.context or 'the plan’s (the longest that fits)'}; the last model is the target's.",
        "",
        "| model | engine by hand (s), median [min-max] | `up --detach` (s), median [min-max] | up adds (ms) | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    ratios = []
    for label, model in models:
        raw, up = measure(model, args.runs, workdir, env, args.context, args.engine)
        ratio = statistics.median(up) / statistics.median(raw)
        ratios.append(ratio)
        added = 1000 * (statistics.median(up) - statistics.median(raw))
        lines.append(
            f"| {label} | {statistics.median(raw):.2f} [{min(raw):.2f}-{max(raw):.2f}] "
            f"| {statistics.median(up):.2f} [{min(up):.2f}-{max(up):.2f}] | {added:.0f} | {ratio:.3f} |"
        )
        print(lines[-1], file=sys.stderr)
    label, target = models[-1]
    crashes = [crash_report_seconds(target, free_port(), env, args.context, args.engine) for _ in range(3)]
    lines += [
        "",
        f"up / by hand for {label}: **{ratios[-1]:.3f}** (target <= 1.05): {'met' if ratios[-1] <= 1.05 else 'missed'}",
        f"crash after ready reported by a foreground `up` in {max(crashes):.2f} s at worst of 3 "
        f"(target <= 1 s): {'met' if max(crashes) <= 1 else 'missed'}",
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        suffix = (f"_context_{args.context}" if args.context else "") + (
            "_llama_server" if args.engine != "llamacpp" else ""
        )
        command = "python bench/time_to_ready.py" + (f" --context {args.context}" if args.context else "")
        command += f" --engine {args.engine}" if args.engine != "llamacpp" else ""
        update_section("time_to_ready" + suffix, command, table)


if __name__ == "__main__":
    main()
