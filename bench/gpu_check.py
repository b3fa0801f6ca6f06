"""The plan's per-device memory against what llama.cpp allocates on a real GPU (run by scripts/gpu-check).

For each -ngl: `qwen-deploy plan --json` gives the candidate's memory.devices; `qwen-deploy up --detach`
runs that plan's own command; the engine's log gives the buffers it allocated (`CUDA0 model buffer size`,
`CUDA0 KV buffer size`, `CUDA0 compute buffer size`, `CPU_Mapped model ...`, `CUDA_Host compute ...`),
nvidia-smi the VRAM the process holds (buffers + CUDA context + cuBLAS + pool: the plan's other_bytes);
then `down`. Writes gpu_check.json and gpu_check.md into --out; `--record FILE` puts a run's table into
BENCHMARKS.md here.

    python bench/gpu_check.py --model M.gguf --out DIR [--gpu-layers 0 19 37] [--context 32768] [--no-gpu]
    python bench/gpu_check.py --record DIR/gpu_check.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

MiB = 1 << 20
BUFFER_RE = re.compile(r"(\S+)\s+(model|KV|compute|output) buffer size =\s+([\d.]+) MiB")
PARTS = {"model": "model_bytes", "KV": "kv_bytes", "compute": "compute_bytes", "output": "other_bytes"}


def device_of(buffer: str) -> str:
    """llama.cpp's buffer names -> the plan's devices: CUDA0/MTL0 stay, host buffers are 'CPU'."""
    return "CPU" if buffer.startswith(("CPU", "CUDA_Host")) else buffer


def logged_devices(log: str) -> dict[str, dict[str, int]]:
    """{device: {model_bytes, kv_bytes, compute_bytes, other_bytes}} from the engine's buffer lines (the last
    report of each buffer wins: a retried context prints again)."""
    buffers: dict[tuple[str, str], int] = {}
    for name, kind, size in BUFFER_RE.findall(log):
        buffers[(name, kind)] = round(float(size) * MiB)
    out: dict[str, dict[str, int]] = {}
    for (name, kind), size in buffers.items():
        part = out.setdefault(device_of(name), dict.fromkeys(PARTS.values(), 0))
        part[PARTS[kind]] += size
    return out


def vram_used_mib(pid: int) -> int | None:
    """MiB nvidia-smi says `pid` (or, where pids are not visible, every process) holds on the GPU."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    rows = [line.split(",") for line in out.strip().splitlines() if "," in line]
    mine = [int(used) for p, used in rows if p.strip().isdigit() and int(p) == pid]
    if mine:
        return sum(mine)
    return sum(int(used) for _, used in rows if used.strip().isdigit()) or None


def qd(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen_deploy", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def check_one(model: str, ngl: int, context: int, no_gpu: bool, env: dict[str, str]) -> dict:
    common = ["--model", model, "--engine", "llamacpp", "--context", str(context), "--gpu-layers", str(ngl)]
    common += ["--no-gpu"] if no_gpu else []
    plan = qd(env, "plan", *common, "--json")
    if plan.returncode != 0:
        return {"gpu_layers": ngl, "error": plan.stderr.strip()[-2000:]}
    choice = json.loads(plan.stdout)["choice"]
    predicted = {d["name"]: dict(d) for d in choice["memory"].get("devices", [])}
    parts = choice["memory"].get("parts", {})
    if set(predicted) == {"CPU"} and "compute_buffer_bytes" in parts:
        # a CPU-only plan counts the compute buffer's pages a run touches (compute_resident_bytes); the log
        # prints the buffer allocated, which the plan has as compute_buffer_bytes
        predicted["CPU"]["compute_bytes"] = parts["compute_buffer_bytes"]
    name = f"gpucheck{ngl}"
    started = time.monotonic()
    up = qd(env, "up", *common, "--detach", "--name", name, "--port", "auto", "--no-fallback")
    seconds = round(time.monotonic() - started, 1)
    record_path = Path(env["QWEN_DEPLOY_STATE_DIR"]) / "servers" / f"{name}.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    log_path = Path(record.get("log") or Path(env["QWEN_DEPLOY_STATE_DIR"]) / "logs" / f"{name}.log")
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    vram = vram_used_mib(record["pid"]) if record.get("pid") and not no_gpu else None
    qd(env, "down", name, timeout=120)
    return {
        "gpu_layers": ngl,
        "plan_gpu_layers": choice.get("gpu_layers"),
        "context": choice["context"],
        "kv_cache_dtype": choice["kv_cache_dtype"],
        "command": choice["command"],
        "up_returncode": up.returncode,
        "up_stderr_tail": up.stderr.strip()[-1500:],
        "seconds_to_ready": seconds,
        "predicted": predicted,
        "logged": logged_devices(log),
        "vram_used_mib": vram,
        "log_buffer_lines": [m.group(0) for m in BUFFER_RE.finditer(log)],
    }


def pct(predicted: int, logged: int) -> str:
    if not logged:
        return "—" if not predicted else "n/a"
    return f"{(predicted - logged) / logged * 100:+.1f}%"


def table(result: dict) -> str:
    lines = [
        f"GPU: {result.get('gpu', '?')}; model: {Path(result['model']).name}; llama-cpp-python "
        f"{result.get('llama_cpp', '?')}.",
        "",
        "| -ngl | device | part | predicted MiB | logged MiB | predicted vs logged |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for run in result["runs"]:
        if "error" in run:
            lines.append(f"| {run['gpu_layers']} | — | plan refused | | | {run['error'][:120]} |")
            continue
        if run["up_returncode"] != 0:
            lines.append(f"| {run['gpu_layers']} | — | up failed ({run['up_returncode']}) | | | see gpu_check.json |")
        for device in sorted(set(run["predicted"]) | set(run["logged"]), key=lambda d: (d == "CPU", d)):
            p, g = run["predicted"].get(device, {}), run["logged"].get(device, {})
            for part in ("model_bytes", "kv_bytes", "compute_bytes"):
                pb, gb = p.get(part, 0), g.get(part, 0)
                if pb or gb:
                    lines.append(
                        f"| {run['gpu_layers']} | {device} | {part.removesuffix('_bytes')} | {pb / MiB:,.2f} | "
                        f"{gb / MiB:,.2f} | {pct(pb, gb)} |"
                    )
        gpu = next((d for d in run["predicted"] if d != "CPU"), None)
        if gpu and run.get("vram_used_mib"):
            total = run["predicted"][gpu]["total_bytes"] / MiB
            lines.append(
                f"| {run['gpu_layers']} | {gpu} | VRAM held (nvidia-smi) | {total:,.0f} | {run['vram_used_mib']:,} | "
                f"{pct(round(total), run['vram_used_mib'])} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--gpu-layers", type=int, nargs="+", default=[0, 19, 37])
    parser.add_argument("--context", type=int, default=32768)
    parser.add_argument("--state", type=Path, default=Path("/tmp/gpu-check/state"), help="up's state folder")
    parser.add_argument("--no-gpu", action="store_true", help="a rehearsal on a machine without a GPU")
    parser.add_argument("--record", type=Path, help="a gpu_check.json to write into BENCHMARKS.md")
    args = parser.parse_args()
    if args.record:
        from bench._report import update_section

        result = json.loads(args.record.read_text())
        update_section("gpu_check", f"scripts/gpu-check run (on {result.get('gpu', '?')})", table(result))
        return
    if not args.model or not args.out:
        parser.error("--model and --out are needed (or --record FILE)")
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, QWEN_DEPLOY_STATE_DIR=str(args.state), PYTHONUNBUFFERED="1")
    gpu = "none (rehearsal)"
    if not args.no_gpu:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)  # fmt: skip
        gpu = smi.stdout.strip() or "unknown"
    version = subprocess.run([sys.executable, "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
    result = {"gpu": gpu, "model": args.model, "llama_cpp": version, "runs": []}
    for ngl in args.gpu_layers:
        run = check_one(args.model, ngl, args.context, args.no_gpu, env)
        result["runs"].append(run)
        print(f"-ngl {ngl}: up exit {run.get('up_returncode')}, {run.get('seconds_to_ready')} s", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    (args.out / "gpu_check.md").write_text(table(result) + "\n")
    logs = Path(env["QWEN_DEPLOY_STATE_DIR"]) / "logs"
    for log in sorted(logs.glob("*.log")) if logs.exists() else []:
        (args.out / log.name).write_bytes(log.read_bytes()[-4_000_000:])
    print(table(result))


if __name__ == "__main__":
    main()
